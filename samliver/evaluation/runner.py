"""`evaluate`: one model over a dataset's cases × targets (liver, tumour) × prompt settings.

Each case's slices are encoded once, through one `SliceEncoder` whose cache holds the whole
case; every setting and target decodes from those embeddings, so a run with many settings
costs little more than the encoder pass of one. Each finished case is written to the run
folder at once (``cases/<case>.json``), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import numpy as np

from samliver.atomic import write_bytes_atomic
from samliver.errors import DatasetError, SamliverError
from samliver.inference import SliceEncoder
from samliver.io.hu import check_hu

from . import outputs
from .settings import TARGETS, CaseContext, PromptSetting, SettingError, parse_settings, reference_mask


@dataclass
class EvaluationResult:
    """What `evaluate` returns.

    Attributes:
        rows: one dict per (case, target, setting): the `outputs.CASE_COLUMNS` (metrics per
            `samliver.evaluation.metrics`, empty-mask values as documented there).
        lesions: one dict per reference (``kind="reference"``) or predicted lesion, per case and setting.
        summary: per setting and target: metric statistics, global Dice, lesion detection.
        config: the run's record (model, checkpoint sha256, adapter, data, settings, version, timings).
        run_dir: the run folder, or None for a run kept in memory.
        skipped: case name -> why it could not be evaluated (unreadable files, no labels, not CT).
    """

    rows: list[dict]
    lesions: list[dict]
    summary: dict
    config: dict
    run_dir: Path | None = None
    timings: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def mean(self, metric: str, setting: str, target: str = "liver") -> float:
        """Mean of ``metric`` for ``setting`` and ``target`` over cases with a non-empty reference."""
        return self.summary[setting][target]["metrics"][metric]["mean"]

    def table(self) -> str:
        """The Markdown summary (as ``summary.md``)."""
        return outputs.summary_markdown(self.summary, self.config, self.timings)


class _CountingEncoder(SliceEncoder):
    """A `SliceEncoder` that also counts the slices it encodes and the seconds spent encoding."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds, self.encoded = 0.0, 0

    def encode(self, hu_volume, slices, window=None):
        before, start = len(self._cache), time.perf_counter()
        out = super().encode(hu_volume, slices, window)
        self.seconds += time.perf_counter() - start
        self.encoded += len(self._cache) - before  # the cache holds the whole case: nothing is evicted
        return out


def evaluate(model, data, prompts: str | Sequence = ("box",), output: str | Path | None = None, *,
             checkpoint: str | Path | None = None, adapter: str | Path | None = None, device: str = "cpu",
             split: str | None = None, split_file: str | Path | None = None, split_seed: int = 0,
             max_cases: int | None = None, targets: Sequence[str] | None = None, seed: int = 0,
             window: tuple[float, float] | None = None, batch_size: int = 4, nsd_tolerance_mm: float = 2.0,
             resume: bool = False, force: bool = False, figures: bool = True, strict: bool = False,
             log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Evaluate a model on a dataset under several prompt settings.

    Args:
        model: a registered model name (loaded with ``checkpoint``, ``adapter``, ``device``) or a
            `PromptableSegmenter`.
        data: a dataset spec for `samliver.data.load_dataset` (folder or ``phantom:...``) or a `Dataset`.
        prompts: setting names (``"box,point-1"`` or a list; see `samliver.evaluation.settings`).
        output: the run folder; None keeps everything in memory (no files, no resume).
        split: ``"train"``, ``"val"`` or ``"test"`` (or None/``"all"``: every case); the split comes from
            ``split_file``, else `samliver.data.split_cases` (0.7/0.15/0.15) with ``split_seed``.
        max_cases: evaluate only the first N cases of the selection.
        targets: ``liver`` and/or ``tumour`` (default both; tumour only for datasets without liver labels).
        seed: seeds the prompt simulation (jitter, extra points), per case, setting, target and slice.
        window: CT window (lo, hi) in HU instead of the model's default.
        resume / force: continue the run in ``output`` / replace it; without either an ``output``
            holding a run is refused.
        figures: write box plots and overlay pictures.
        strict: raise on the first case that cannot be evaluated (a missing or unreadable file, an empty
            label volume, an image that is not CT in HU). Otherwise such cases are skipped and listed
            in ``EvaluationResult.skipped`` and run.json; only a run where every case fails raises
            (before its run folder is created).
        log: called with one progress line per case.
    Raises:
        SettingError, RunFolderError, DatasetError, AdapterError, CheckpointError (all `SamliverError`).
    """
    import samliver

    started = time.perf_counter()
    settings = parse_settings(prompts)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise SettingError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (np.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise SettingError(f"NSD tolerance must be a finite number of mm >= 0, got {nsd_tolerance_mm!r}")
    folder = outputs.RunFolder(output) if output is not None else None
    if folder is not None:
        folder.check(resume, force)
    dataset, data_record = _select_cases(data, split, split_file, split_seed, max_cases, strict)
    targets = _targets(targets, dataset.has_liver, data_record["spec"])
    if isinstance(model, str):
        model = samliver.load_model(model, checkpoint=checkpoint, adapter=adapter, device=device)
    elif checkpoint is not None or adapter is not None:
        raise SettingError("checkpoint= and adapter= apply when model is a name; a model object is used as it is")
    model.eval()
    for setting in settings:
        setting.check(model)
    config = _config(model, checkpoint, adapter, data_record, settings, targets, seed, window, nsd_tolerance_mm,
                     batch_size, device)
    # cases the dataset listing already found faulty (a missing file); strict loading raised for them
    problems = dataset.problems
    skipped = {name: problems[name] for name in data_record["cases"] if name in problems}
    if skipped and len(skipped) == len(data_record["cases"]):
        _nothing_to_evaluate(data_record["spec"], skipped)
    # A fresh run folder is created with its first case, so a run where no case can be read leaves nothing.
    opened = folder is None
    if folder is not None and folder.existing() is not None:
        folder.open(config, resume, force)
        opened = True
    records = []
    for i, name in enumerate(data_record["cases"]):
        where = f"[{i + 1}/{len(data_record['cases'])}] {name}"
        if name in skipped:
            continue
        record = folder.load_case(name, config["key"]) if folder is not None else None
        if record is not None:
            records.append(record)
            if log:
                log(f"{where}: done before, kept")
            continue
        try:
            case = _read_case(dataset, name)
        except SamliverError as exc:
            if strict:
                raise
            skipped[name] = str(exc)  # reported with the result (the CLI lists them at the end)
            continue
        if not opened:
            folder.open(config, resume, force)
            opened = True
        record, overlay = evaluate_case(model, case, settings, targets, config)
        record["key"] = config["key"]
        if folder is not None:
            folder.save_case(record, overlay)
        records.append(record)
        if log:
            dice = ", ".join(f"{r['target']}/{r['setting']} {r['dice']:.3f}" for r in record["rows"])
            log(f"{where}: {record['timings']['total_s']:.1f} s; Dice {dice}")
    if not records:
        _nothing_to_evaluate(data_record["spec"], skipped)
    rows = [r for rec in records for r in rec["rows"]]
    lesions = [r for rec in records for r in rec["lesions"]]
    summary = outputs.summarize(rows, lesions, [s.name for s in settings], targets)
    timings = _timings(records, time.perf_counter() - started)
    config.update(status="complete", timings=timings, skipped=skipped)
    result = EvaluationResult(rows, lesions, summary, config, folder.root if folder else None, timings, skipped)
    if folder is not None:
        root = folder.root
        outputs.write_csv(root / outputs.PER_CASE, rows, outputs.CASE_COLUMNS)
        outputs.write_csv(root / outputs.PER_LESION, lesions, outputs.LESION_COLUMNS)
        write_bytes_atomic(root / outputs.SUMMARY_JSON, outputs.to_bytes(
            {"model": config["model"], "data": config["data"], "settings": config["settings"],
             "nsd_tolerance_mm": nsd_tolerance_mm, "summary": summary, "timings": timings}, strict=True))
        write_bytes_atomic(root / outputs.SUMMARY_MD, result.table().encode())
        if figures:
            from .figures import write_figures

            config["figures"] = write_figures(folder, records, [s.name for s in settings], targets, model.spec.window
                                              if window is None else window)
        folder.write_run(config)
    return result


def evaluate_case(model, case, settings: list[PromptSetting], targets: Sequence[str], config: dict):
    """Score one case: ``(record, overlay)``; ``record`` holds its per-case and per-lesion rows and
    timings, ``overlay`` a few slices (CT, reference, each setting's prediction) for pictures."""
    from . import clinical
    from . import lesions as lesion_metrics
    from . import metrics

    start = time.perf_counter()
    hu = np.asarray(case.image.array, np.float32)
    spacing = tuple(float(s) for s in case.image.spacing)
    encoder = _CountingEncoder(model, batch_size=config["batch_size"], cache_size=max(1, hu.shape[0]))
    window = tuple(config["window"]) if config["window"] else None
    ctx = CaseContext(model, case.name, hu, spacing, case.label, encoder, window, config["seed"])
    picks = overlay_slices(case.label)
    overlay = {"slices": np.array(picks, np.int64), "ct": hu[picks].astype(np.int16), "reference": case.label[picks]}
    rows, lesion_rows, decode_s, metrics_s = [], [], {}, 0.0
    tol = config["nsd_tolerance_mm"]
    for setting in settings:
        liver_pred, picture = None, np.zeros((len(picks), *hu.shape[1:]), np.uint8)
        for target in targets:
            t0, e0 = time.perf_counter(), encoder.seconds
            pred = setting.predict(ctx, target)
            seconds = time.perf_counter() - t0
            decode_s[setting.name] = decode_s.get(setting.name, 0.0) + seconds - (encoder.seconds - e0)
            t1 = time.perf_counter()
            ref = ctx.reference(target)
            row = {"case": case.name, "target": target, "setting": setting.name,
                   **metrics.case_metrics(pred, ref, spacing, tol), "tp_voxels": int(np.count_nonzero(pred & ref)),
                   "pred_voxels": int(pred.sum()), "ref_voxels": int(ref.sum()), "seconds": seconds}
            if target == "liver":
                row["volume_error_ml"] = clinical.liver_volume_error_ml(pred, ref, spacing)
                liver_pred = pred
            else:
                report = lesion_metrics.evaluate_lesions(pred, ref, spacing)
                row.update(_lesion_counts(report))
                row["recist_abs_error_mm"] = report.mean_diameter_error_mm
                if liver_pred is not None:
                    burden_ref = clinical.tumour_burden(ref, ctx.reference("liver"))
                    burden_pred = clinical.tumour_burden(pred, liver_pred)
                    row.update(burden_ref=burden_ref, burden_pred=burden_pred,
                               burden_abs_error=abs(burden_pred - burden_ref))
                lesion_rows += _lesion_rows(case.name, setting.name, report)
            rows.append(row)
            value = np.uint8(1 if target == "liver" else 2)
            np.maximum(picture, np.where(pred[picks], value, np.uint8(0)), out=picture)
            metrics_s += time.perf_counter() - t1
        overlay[f"pred/{setting.name}"] = picture
    timings = {"total_s": time.perf_counter() - start, "encode_s": encoder.seconds, "slices": int(hu.shape[0]),
               "slices_encoded": encoder.encoded, "decode_s": decode_s, "metrics_s": metrics_s}
    return {"case": case.name, "spacing": list(spacing), "shape": list(hu.shape), "rows": rows,
            "lesions": lesion_rows, "timings": timings}, overlay


def _read_case(dataset, name: str):
    """Case ``name``, checked for what evaluation needs: reference labels and an image in HU."""
    case = dataset[name]
    if not case.label.any():
        raise DatasetError(f"case {name}: its label volume is empty; evaluation needs reference labels")
    check_hu(case.image.array, f"case {name}")
    return case


def _nothing_to_evaluate(spec: str, skipped: dict[str, str]) -> NoReturn:
    """Raise the `DatasetError` of a run in which every case was skipped, naming the first case's fault."""
    name, why = next(iter(skipped.items()))
    more = f" (and {len(skipped) - 1} more case(s))" if len(skipped) > 1 else ""
    raise DatasetError(f"{spec}: no case could be evaluated; {why if name in why else f'case {name}: {why}'}{more}")


def overlay_slices(label: np.ndarray, count: int = 3) -> list[int]:
    """Up to ``count`` slices worth a picture: the largest tumour slice, the largest liver slice,
    and evenly spaced slices through the liver's extent."""
    liver_area = (label >= 1).sum(axis=(1, 2))
    tumour_area = (label == 2).sum(axis=(1, 2))
    picks = [int(np.argmax(tumour_area))] if tumour_area.any() else []
    present = np.flatnonzero(liver_area)
    if present.size:
        picks.append(int(np.argmax(liver_area)))
        picks += [int(present[int(q * (present.size - 1))]) for q in (0.25, 0.75, 0.5)]
    picks = list(dict.fromkeys(picks))[:count] or [label.shape[0] // 2]
    return sorted(picks)


def _lesion_counts(report) -> dict:
    return {"lesions_ref": report.iou.n_ref, "lesions_pred": report.iou.n_pred, "lesion_tp_ref": report.iou.tp_ref,
            "lesion_tp_pred": report.iou.tp_pred, "lesion_overlap_ref": report.any_overlap.tp_ref,
            "lesion_overlap_pred": report.any_overlap.tp_pred, "lesion_f1": report.iou.f1,
            "lesion_precision": report.iou.precision, "lesion_recall": report.iou.recall}


def _lesion_rows(case: str, setting: str, report) -> list[dict]:
    from .lesions import size_bin

    rows = [{"case": case, "setting": setting, "kind": "reference", "lesion": les.label, "volume_ml": les.volume_ml,
             "diameter_mm": les.diameter_mm, "size_bin": les.size_bin, "best_iou": les.best_iou,
             "detected": les.detected, "overlapped": les.overlapped, "dice": les.dice,
             "pred_diameter_mm": les.pred_diameter_mm, "diameter_error_mm": les.diameter_error_mm}
            for les in report.reference]
    rows += [{"case": case, "setting": setting, "kind": "predicted", "lesion": les.label, "volume_ml": les.volume_ml,
              "diameter_mm": les.diameter_mm, "size_bin": size_bin(les.diameter_mm), "best_iou": les.best_iou,
              "detected": les.matched, "overlapped": les.overlapped} for les in report.predicted]
    return rows


def _select_cases(data, split, split_file, split_seed, max_cases, strict: bool = True):
    """The dataset and the record of which cases are evaluated (``strict``: a case with a missing file
    raises here; otherwise it stays listed in ``dataset.problems``)."""
    from samliver.data import Dataset, load_dataset, load_split, split_cases

    spec = str(data.root or data.title) if isinstance(data, Dataset) else str(data)
    if not isinstance(data, Dataset):
        root = Path(spec)
        if (root / "images").is_dir() and not (root / "labels").is_dir():
            raise DatasetError(f"{root}: images/ but no labels/ folder; evaluation needs reference labels")
        data = load_dataset(spec, strict=strict)
    names = list(data.names)
    if split not in (None, "all"):
        parts = load_split(split_file, names) if split_file else split_cases(names, seed=split_seed)
        if split not in parts:
            raise DatasetError(f"split {split!r}: the split has only {', '.join(parts) or 'no parts'}")
        names = list(parts[split])
        if not names:
            raise DatasetError(f"split {split!r} of {spec} holds no cases")
    elif split_file:
        raise DatasetError("--split-file needs --split train|val|test")
    if max_cases is not None:
        if max_cases < 1:
            raise DatasetError(f"max_cases must be >= 1, got {max_cases}")
        names = names[:max_cases]
    record = {"spec": spec, "layout": data.layout, "split": split or "all",
              "split_file": str(split_file) if split_file else None, "split_seed": split_seed,
              "max_cases": max_cases, "has_liver": data.has_liver, "cases": names}
    return data, record


def _targets(targets, has_liver: bool, spec: str) -> list[str]:
    if targets is None:
        return list(TARGETS) if has_liver else ["tumour"]
    targets = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    for t in targets:
        reference_mask(np.zeros(1, np.uint8), t)  # validates the name
    if "liver" in targets and not has_liver:
        raise DatasetError(f"{spec}: the dataset has no liver labels; evaluate the tumour target only")
    return [t for t in TARGETS if t in targets]


def _config(model, checkpoint, adapter, data, settings, targets, seed, window, tol, batch_size, device) -> dict:
    import samliver

    adapter_info = getattr(model, "adapter", None)
    model_record = {"name": model.spec.name, "checkpoint": str(checkpoint) if checkpoint else None,
                    "checkpoint_sha256": model.checkpoint_sha256, "adapter_path": str(adapter) if adapter else None,
                    "adapter": adapter_info}
    if adapter:
        from samliver.adapters import WEIGHTS_NAME
        from samliver.weights_store import sha256_file

        model_record["adapter_sha256"] = sha256_file(Path(adapter) / WEIGHTS_NAME)
    setting_records = [{"name": s.name, "class": type(s).__name__, "params": s.params()} for s in settings]
    identity = {"model": {k: model_record.get(k) for k in ("name", "checkpoint_sha256", "adapter", "adapter_sha256")},
                "data": {k: data[k] for k in ("spec", "split", "split_file", "split_seed")},
                "settings": setting_records, "targets": list(targets), "seed": seed,
                "window": list(window) if window else None, "nsd_tolerance_mm": tol}
    return {"samliver_version": samliver.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": "running", "model": model_record, "data": data, "settings": setting_records,
            "targets": list(targets), "seed": seed, "window": list(window) if window else None,
            "nsd_tolerance_mm": tol, "batch_size": batch_size, "device": str(device),
            "identity": identity, "key": outputs.identity_key(identity)}


def _timings(records: list[dict], total: float) -> dict:
    decode: dict[str, float] = {}
    for rec in records:
        for name, s in rec["timings"]["decode_s"].items():
            decode[name] = decode.get(name, 0.0) + s
    return {"total_s": total, "cases": len(records),
            "encode_s": sum(r["timings"]["encode_s"] for r in records),
            "slices_encoded": sum(r["timings"]["slices_encoded"] for r in records),
            "metrics_s": sum(r["timings"]["metrics_s"] for r in records),
            "cases_s": sum(r["timings"]["total_s"] for r in records), "decode_s": decode}
