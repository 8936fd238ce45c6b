"""The end of a run: export the best adapter, compare zero-shot and adapted Dice on the held-out test
cases, check every process holds the same weights, write ``run.json`` and ``report.md``, and (for
pretraining the bundled model) export the whole model as a base checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samliver.atomic import write_bytes_atomic

from . import validation
from .config import ConfigError, TrainConfig
from .data import CaseSplit, eval_loader
from .run_folder import RunFolder
from .setup import Progress, weights_digest
from .steps import step_kind


def finish(accelerator: Any, config: TrainConfig, run: RunFolder, split: CaseSplit, final_model: nn.Module,
           progress: Progress, info: dict[str, Any], window: tuple[float, float], log) -> dict[str, Any]:
    """Everything after the last step (see the module docstring); returns the final ``run.json`` content."""
    from accelerate.utils import gather_object

    accelerator.wait_for_everyone()
    run.export_best()
    accelerator.wait_for_everyone()
    info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), steps=progress.completed_steps,
                best_step=progress.best_step, best_val_score=progress.best_score, validation=progress.history,
                rank_weight_digests=gather_object([weights_digest(final_model)]))
    test_cases = split.cases("test")
    if config.final_test and test_cases:
        info["test"] = held_out_test(accelerator, config, run, test_cases, window)
        log(test_table(info["test"], len(test_cases)))
    if config.export_base and accelerator.is_main_process:
        info["exported_base"] = str(export_base(config, run.root, config.export_base, info))
        log(f"exported the whole model to {config.export_base}")
    accelerator.wait_for_everyone()
    run.write_json(info)
    run.write_text("report.md", report(info))
    log(f"run folder: {run.root} (adapter, run.json, report.md)")
    return info


def _fresh(config: TrainConfig, adapter: Path | None, device: torch.device) -> nn.Module:
    """The base model (with ``adapter``) rebuilt as at the start of the run: for ``checkpoint: random`` the
    same seed gives the same random base weights the adapter was trained on."""
    import samliver
    from accelerate.utils import set_seed

    set_seed(config.seed)
    return samliver.load_model(config.model, checkpoint=config.checkpoint, adapter=adapter, device=device)


def held_out_test(accelerator: Any, config: TrainConfig, run: RunFolder, cases: list, window) -> dict[str, Any]:
    """Dice of the base model (zero-shot, tight ground-truth boxes) and of the exported adapter (loaded
    from the run folder as a user would) on the test cases."""
    loader = accelerator.prepare(eval_loader(len(cases)))
    base = _fresh(config, None, accelerator.device)
    zero = validation.evaluate(accelerator, base, "prompted", cases, loader, window, config.targets)
    adapted_model = _fresh(config, run.root, accelerator.device)
    kind = step_kind(adapted_model)
    adapted = validation.evaluate(accelerator, adapted_model, kind, cases, loader, window, config.targets)
    return {"cases": [c.name for c in cases], "zero_shot": zero, "adapted": adapted,
            "adapted_mode": "automatic (prompt-free head)" if kind == "head" else "tight ground-truth boxes",
            "zero_shot_mode": "tight ground-truth boxes"}


def test_table(test: dict[str, Any], count: int) -> str:
    """The zero-shot vs adapted table printed at the end of a run."""
    def cell(v: float | None) -> str:
        return "   n/a" if v is None else f"{v:6.3f}"

    lines = [f"held-out test, {count} case(s), 3D Dice:", "               liver  tumour  prompts"]
    for name, key in (("zero-shot", "zero_shot"), ("adapted", "adapted")):
        r = test[key]
        lines.append(f"  {name:<11}{cell(r['liver'])}  {cell(r['tumor'])}  {test[key + '_mode']}")
    return "\n".join(lines)


def export_base(config: TrainConfig, run_dir: Path, path: str | Path, info: dict[str, Any]) -> Path:
    """Write the whole trained model (the best adapter merged into its base) as a plain base checkpoint.

    ``path`` gets the upstream module's state dict under the official key names (loadable by
    ``samliver.load_model(name, checkpoint=path)``), ``path.json`` beside it the phantom version,
    the training config and the validation result, and ``<file>.sha256`` its digest.

    Raises:
        ConfigError: the strategy changes the architecture (injected layers, a new head), so the
            result would not be a base checkpoint; use ``full`` (or ``decoder`` with ``head: sam``).
    """
    from safetensors.torch import save

    from samliver.adapters.lora import upstream_module
    from samliver.registry import get_spec
    from samliver.weights_store import sha256_file, write_record

    model = _fresh(config, run_dir, torch.device("cpu"))
    state = {k: v.detach().cpu().contiguous() for k, v in upstream_module(model).state_dict().items()}
    spec = get_spec(config.model)
    reference = upstream_module(spec.builder(spec)).state_dict()
    extra, missing = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
    if extra or missing or getattr(model, "task_head", None) is not None:
        raise ConfigError(f"export-base: method {config.method!r} changes the {config.model} architecture "
                          f"(extra tensors {extra[:2]}); only strategies that train the base's own weights export "
                          "a base checkpoint (full, or decoder with head: sam)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": config.model, "phantom_version": str(info["data"].get("phantom_version")),
            "samliver_version": info.get("samliver_version", "")}
    write_bytes_atomic(path, save(state, metadata={"format": "pt", **meta}))
    digest = sha256_file(path)
    write_record(path, digest)
    record = {"model": config.model, "file": path.name, "sha256": digest,
              "phantom_version": info["data"].get("phantom_version"), "data": config.data,
              "trained_steps": info.get("steps"), "best_step": info.get("best_step"),
              "best_val_score": info.get("best_val_score"), "samliver_version": info.get("samliver_version"),
              "training_config": config.to_dict()}
    write_bytes_atomic(path.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    return path


def report(info: dict[str, Any]) -> str:
    """``report.md``: what was trained on what, validation Dice over the run, and the test comparison."""
    cfg = info["config"]
    data = info["data"]

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"# samliver training run: {info['method']} on {info['model']}", "",
             f"- base checkpoint: {info['base_checkpoint'] or 'bundled/downloaded'} "
             f"(sha256 {info['base_checkpoint_sha256'] or 'none: random weights'})",
             f"- strategy config: `{json.dumps((info.get('strategy') or {}).get('config', {}))}`",
             f"- step kind: {info['step_kind']}; precomputed embeddings: {info['precomputed_embeddings']}; "
             f"trainable parameters: {info['trainable_parameters']:,}",
             f"- data: `{cfg['data']}`: {len(data['train'])} train / {len(data['val'])} val cases "
             f"({info['train_slices']} training slices); test: {len(data['test'])} case(s)"
             + (f"; phantom version {data['phantom_version']}" if data.get("phantom_version") is not None else ""),
             f"- {info['steps']} steps of batch {cfg['batch_size']} x {info['num_processes']} process(es) x "
             f"{cfg['gradient_accumulation_steps']} accumulation, lr {cfg['lr']} ({cfg['scheduler']}), "
             f"mixed precision {info['mixed_precision']}, seed {cfg['seed']}",
             f"- exported adapter: best validation score {fmt(info.get('best_val_score'))} at step {info['best_step']}",
             "", "## Validation (3D Dice, tight ground-truth boxes or automatic)", "",
             "| step | liver | tumour |", "|---:|---:|---:|"]
    lines += [f"| {e['step']} | {fmt(e['val/liver_dice'])} | {fmt(e['val/tumor_dice'])} |" for e in info["validation"]]
    if "test" in info:
        t = info["test"]
        lines += ["", f"## Held-out test ({len(t['cases'])} case(s))", "", "| model | liver | tumour | prompts |",
                  "|---|---:|---:|---|"]
        for name, key in (("zero-shot (base)", "zero_shot"), ("adapted", "adapted")):
            lines.append(f"| {name} | {fmt(t[key]['liver'])} | {fmt(t[key]['tumor'])} | {t[key + '_mode']} |")
    lines += ["", "Files: `adapter_model.safetensors` + `adapter_config.json` (load with "
              "`samliver.load_model(name, adapter=RUN_DIR)`), `run.json`, `metrics.jsonl`, `checkpoints/`.", ""]
    return "\n".join(lines)
