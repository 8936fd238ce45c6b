"""Self-training with pseudo-labels: ``train_adapter.py --pseudo-label-rounds N --unlabelled DATA``.

Round 0 trains on the labelled cases only (`train`, as without the flags). Each later round k: the
model of round k-1 (its exported best adapter) pseudo-labels the unlabelled CTs
(`samliver.prompts.pseudo_labels.pseudo_label`, first prompts from ``pseudo_labels.prompts``, objects
kept by ``pseudo_labels.filter``), they are written beside the labelled cases as one dataset
(`samliver.training.pseudo_data`), and a student trains on the union for ``max_steps`` steps. Every
round validates on the same labelled validation cases and tests on the same held-out cases.

The run folder::

    self_training.json   the config, and per round: run folder, training cases and slices, pseudo-label
                         counts (and their Dice against labels the unlabelled source may have), best
                         validation Dice, test Dice; rewritten atomically after each round
    report.md            those numbers as a table
    labelled/            the labelled cases (images/, labels/) and split.json (train / val / test, fixed)
    round_0/             a training run folder (run.json, metrics.jsonl, adapter, report.md, ...)
    pseudo_1/            images/, labels/ (labelled/ linked + pseudo-labelled cases), uncertain/,
                         split.json, pseudo_labels.json (every object's score, stability and verdict)
    round_1/             the student's run folder; then pseudo_2/, round_2/, ...
    adapter_model.safetensors, adapter_config.json   the last round's adapter (``adapter=RUN_DIR``)
    cache/               the slice cache every round shares (unless ``cache_dir`` is set)

With ``--resume``, finished rounds and complete pseudo-label folders are kept and an interrupted round
continues from its newest checkpoint. With several processes, the main one writes the folders and the
others wait.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samliver.atomic import write_bytes_atomic
from samliver.data import CacheSettings, load_dataset, load_split, split_cases
from samliver.data.case import LIVER, TUMOR
from samliver.prompts.pseudo_labels import pseudo_label
from samliver.prompts.generators import has_default_generator
from samliver.prompts.pseudo_sources import check_source, is_automatic, prompt_source

from .config import ConfigError, TrainConfig
from .data import item_seed
from .pseudo_data import RECORDS_FILE, SPLIT_FILE, open_unlabelled, write_labelled, write_pseudo

RECORD_FILE = "self_training.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class SelfTrainingResult:
    """What `self_train` returns: the run folder, the last round's final model (None when a resumed run
    had nothing left to train), and the round records."""

    run_dir: Path
    model: nn.Module | None
    rounds: list[dict[str, Any]]


def round_config(config: TrainConfig, root: Path, k: int, data: Path, adapter: str | None) -> TrainConfig:
    """The plain training config of round ``k``: ``data`` with its split file, its own run folder, the
    shared cache, no further pseudo-label rounds."""
    return dataclasses.replace(
        config, data=str(data), split_file=str(data / SPLIT_FILE), output_dir=str(root / f"round_{k}"),
        cache_dir=config.cache_dir or str(root / "cache"), adapter=adapter,
        pseudo_labels=dataclasses.replace(config.pseudo_labels, rounds=0, unlabelled=None))


def self_train(config: TrainConfig, resume: str | None = None, overwrite: bool = False,
               config_file: str | None = None) -> SelfTrainingResult:
    """Round 0 on the labelled cases, then ``config.pseudo_labels.rounds`` pseudo-label rounds (see the
    module docstring). ``resume``: any value continues the run in the folder (a checkpoint path is not
    meaningful across rounds).

    Raises:
        ConfigError: the folder holds a run (without ``resume`` / ``overwrite``), the unlabelled cases
            share names with labelled or test cases, liver targets on a dataset without a liver label, or
            ``auto`` prompts for a teacher that will have neither a prompt-free head nor a default generator.
        DatasetError / PromptError: unusable data, or a prompt source that cannot give prompts (e.g. a
            missing ``files:`` prompts file); all checked before round 0 trains.
    """
    from accelerate import PartialState

    from .loop import train

    settings = config.pseudo_labels
    source = prompt_source(settings.prompts)
    unlabelled = open_unlabelled(settings.unlabelled)
    _check_first_prompts(config, source, [u.name for u in unlabelled])
    state = PartialState(cpu=config.cpu or not torch.cuda.is_available())
    root = config.run_dir
    _start(root, resume is not None, overwrite, state.is_main_process)
    state.wait_for_everyone()
    labelled = root / "labelled"
    if not labelled.is_dir():
        dataset, split = _labelled_split(config)
        test_names = set(load_dataset(config.test_data).names) if config.test_data else set()
        clash = sorted({u.name for u in unlabelled} & (set(dataset.names) | test_names))
        if clash:
            raise ConfigError(f"unlabelled data {settings.unlabelled}: case {clash[0]} is also a labelled or test "
                              "case; unlabelled CTs must be other cases (other phantom seeds)")
        if state.is_main_process:
            write_labelled(dataset, split, labelled)
        state.wait_for_everyone()

    record: dict[str, Any] = {"config": config.to_dict(), "config_file": config_file, "status": "running",
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": []}
    model = None
    adapter = config.adapter
    for k in range(settings.rounds + 1):
        data = labelled if k == 0 else root / f"pseudo_{k}"
        pseudo = None
        if k:
            teacher_dir = root / f"round_{k - 1}"
            if not (resume is not None and (data / RECORDS_FILE).is_file()):
                if state.is_main_process:
                    teacher = _teacher(config, teacher_dir, state.device)
                    write_pseudo(labelled, unlabelled, data, _labeller(config, teacher, source, k))
                    del teacher
                state.wait_for_everyone()
            pseudo = json.loads((data / RECORDS_FILE).read_text(encoding="utf-8"))
            adapter = str(teacher_dir) if settings.continue_student else config.adapter
        cfg = round_config(config, root, k, data, adapter)
        info = _finished(cfg.run_dir) if resume is not None else None
        if info is None:
            continued = resume is not None and cfg.run_dir.exists()
            result = train(cfg, resume="latest" if continued else None, overwrite=False, config_file=config_file)
            info, model = result.info, result.model
        record["rounds"].append(_round_entry(k, cfg, info, pseudo, root))
        if state.is_main_process:
            _write_record(root, record)
    last = root / f"round_{settings.rounds}"
    if state.is_main_process:
        for name in ADAPTER_FILES:
            write_bytes_atomic(root / name, (last / name).read_bytes())
        record.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _write_record(root, record)
    state.wait_for_everyone()
    return SelfTrainingResult(root, model, record["rounds"])


def _check_first_prompts(config: TrainConfig, source: Any, names: list[str]) -> None:
    """Before round 0 trains: ``source`` can give every unlabelled case its first prompts (a ``files:``
    source has each ``<case>.json``; ``auto`` needs a teacher with a prompt-free head or a default box
    generator, as `samliver.auto.resolve_generator` will ask)."""
    check_source(source, names)
    if is_automatic(source) and not has_default_generator(config.model) and not _trains_head(config):
        raise ConfigError(f"pseudo_labels.prompts auto: {config.model} has no default box generator and method "
                          f"{config.method!r} trains no prompt-free head, so its teacher has no first prompts; "
                          "pass --pseudo-prompts unet:PATH (a box U-Net) or --pseudo-prompts files:FOLDER "
                          "(one <case>.json per unlabelled CT)")


def _trains_head(config: TrainConfig) -> bool:
    """Whether the rounds' models carry a prompt-free head, as their strategy (the continued adapter's, if
    ``config.adapter``) says of its config (`Strategy.attaches_task_head`; no model is built to look)."""
    from samliver.adapters import get_strategy, read_adapter_config

    method, values = config.method, config.method_config
    if config.adapter:
        saved = read_adapter_config(config.adapter)
        method, values = saved["strategy"], saved["config"]
    strategy = get_strategy(method)
    return strategy.attaches_task_head(strategy.config_class.from_dict(values))


def _start(root: Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Refuse a folder that holds a run unless resuming or overwriting; with overwrite, remove what a
    self-training run writes (the slice cache is kept: its entries are checked by fingerprint)."""
    held = (root / RECORD_FILE).exists() or (root / "round_0").exists() or (root / "run.json").exists()
    if held and not (resume or overwrite):
        raise ConfigError(f"{root} already holds a run; pass --resume to continue it, --overwrite to start over, "
                          "or another --output-dir")
    if not (is_main and overwrite and not resume and root.exists()):
        return
    for path in root.iterdir():
        stem = path.name.lstrip(".").removesuffix(".tmp").removesuffix(".old")
        if stem == "labelled" or stem.startswith(("round_", "pseudo_")):
            shutil.rmtree(path, ignore_errors=True)
    for name in (RECORD_FILE, "report.md", *ADAPTER_FILES):
        (root / name).unlink(missing_ok=True)


def _labelled_split(config: TrainConfig) -> tuple[Any, dict[str, list[str]]]:
    """The labelled dataset and its case split, as `split_and_cache` makes it."""
    dataset = load_dataset(config.data)
    if "liver" in config.targets and not dataset.has_liver:
        raise ConfigError(f"{config.data}: the dataset has no liver label; self-train it with targets: [tumor]")
    if config.split_file:
        split = load_split(config.split_file, dataset.names)
    else:
        split = split_cases(dataset.names, config.split, seed=config.split_seed)
    return dataset, {part: list(split.get(part, [])) for part in ("train", "val", "test")}


def _teacher(config: TrainConfig, run_dir: Path, device: Any) -> nn.Module:
    """The previous round's model as its run exported it (best adapter on the same base)."""
    from .finish import _fresh

    return _fresh(config, run_dir, device).eval()


def _labeller(config: TrainConfig, teacher: nn.Module, source: Any, k: int):
    """``(ct, name, index) -> PseudoLabels`` of round ``k``: the teacher with the training cache's CT
    window (the grey values it was trained on), jitter seeded by (seed, round, case)."""
    from samliver.predictor import Predictor

    window = CacheSettings(**dict(config.cache)).window
    labels = [c for c, t in ((LIVER, "liver"), (TUMOR, "tumor")) if t in config.targets]
    settings = config.pseudo_labels.filter

    def label_case(ct: Any, name: str, index: int):
        predictor = Predictor(teacher, cache_size=max(64, ct.shape[0]))
        with torch.no_grad():
            return pseudo_label(predictor, ct, source(predictor, ct, name), settings=settings, labels=labels,
                                window=window, seed=item_seed(config.seed, k, index))
    return label_case


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of a finished round (None: not run, or interrupted)."""
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if info.get("status") == "finished" else None


def _round_entry(k: int, cfg: TrainConfig, info: dict[str, Any], pseudo: dict[str, Any] | None,
                 root: Path) -> dict[str, Any]:
    """One round's line of ``self_training.json``."""
    best = next((e for e in info.get("validation", []) if e["step"] == info.get("best_step")), {})
    test = (info.get("test") or {}).get("adapted") or {}
    return {"round": k, "run_dir": str(Path(cfg.output_dir).relative_to(root)),
            "data": str(Path(cfg.data).relative_to(root)), "train_cases": len(info["data"]["train"]),
            "pseudo_cases": len(pseudo["written"]) if pseudo else 0, "train_slices": info["train_slices"],
            "steps": info.get("steps"), "best_step": info.get("best_step"),
            "val_liver_dice": best.get("val/liver_dice"), "val_tumor_dice": best.get("val/tumor_dice"),
            "val_score": info.get("best_val_score"), "test_liver_dice": test.get("liver"),
            "test_tumor_dice": test.get("tumor"), "pseudo_labels": pseudo["summary"] if pseudo else None}


def _write_record(root: Path, record: dict[str, Any]) -> None:
    write_bytes_atomic(root / RECORD_FILE, (json.dumps(record, indent=2, default=str) + "\n").encode())
    write_bytes_atomic(root / "report.md", report(record).encode())


def report(record: dict[str, Any]) -> str:
    """``report.md``: per round, training data, pseudo-labels kept and Dice (validation at the best step, test)."""
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    cfg = record["config"]
    lines = [f"# samliver self-training: {cfg['method']} on {cfg['model']}", "",
             f"- labelled: `{cfg['data']}`; unlabelled: `{cfg['pseudo_labels']['unlabelled']}`; first prompts: "
             f"`{cfg['pseudo_labels']['prompts']}`; filter: `{json.dumps(cfg['pseudo_labels']['filter'])}`",
             f"- {cfg['max_steps']} steps per round, seed {cfg['seed']}, status {record['status']}", "",
             "| round | train cases (pseudo) | train slices | objects kept / dropped | pseudo Dice liver / tumour "
             "| val liver | val tumour | test liver | test tumour |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in record["rounds"]:
        p = r["pseudo_labels"]
        kept = f"{sum(p['kept'].values())} / {sum(p['dropped'].values())}" if p else "-"
        truth = f"{fmt(p['liver_dice_vs_truth'])} / {fmt(p['tumor_dice_vs_truth'])}" if p else "-"
        lines.append(f"| {r['round']} | {r['train_cases']} ({r['pseudo_cases']}) | {r['train_slices']} | {kept} | "
                     f"{truth} | {fmt(r['val_liver_dice'])} | {fmt(r['val_tumor_dice'])} | "
                     f"{fmt(r['test_liver_dice'])} | {fmt(r['test_tumor_dice'])} |")
    return "\n".join(lines) + "\n"
