"""The run folder and what is written into it: per-case records (resume), CSV tables, summary
JSON/Markdown, and the comparison of two runs.

A run folder holds ``run.json`` (model, checkpoint sha256, adapter, data, settings, samliver
version, timings), ``cases/<case>.json`` + ``.npz`` (one case's rows and overlay slices, written
as the case finishes), ``per_case.csv``, ``per_lesion.csv``, ``summary.json``, ``summary.md`` and
``figures/``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np

from samliver.atomic import write_bytes_atomic
from samliver.errors import SamliverError

RUN_FILE, CASES_DIR, FIGURES_DIR = "run.json", "cases", "figures"
PER_CASE, PER_LESION, SUMMARY_JSON, SUMMARY_MD = "per_case.csv", "per_lesion.csv", "summary.json", "summary.md"
OUTPUTS = (RUN_FILE, CASES_DIR, FIGURES_DIR, PER_CASE, PER_LESION, SUMMARY_JSON, SUMMARY_MD)

CASE_COLUMNS = ("case", "target", "setting", "dice", "iou", "voe", "rvd", "assd", "hd95", "nsd", "mssd",
                "sensitivity", "precision", "pred_volume_ml", "ref_volume_ml", "volume_error_ml",
                "tp_voxels", "pred_voxels", "ref_voxels", "lesions_ref", "lesions_pred", "lesion_tp_ref",
                "lesion_tp_pred", "lesion_overlap_ref", "lesion_overlap_pred", "lesion_f1", "lesion_precision",
                "lesion_recall", "recist_abs_error_mm", "burden_ref", "burden_pred", "burden_abs_error", "seconds")
LESION_COLUMNS = ("case", "setting", "kind", "lesion", "volume_ml", "diameter_mm", "size_bin", "best_iou",
                  "detected", "overlapped", "dice", "pred_diameter_mm", "diameter_error_mm")
#: metrics summarised per (setting, target): mean ± sd, median over cases with a non-empty reference
SUMMARY_METRICS = ("dice", "iou", "voe", "rvd", "sensitivity", "precision", "assd", "hd95", "mssd", "nsd",
                   "volume_error_ml", "recist_abs_error_mm", "burden_abs_error")
COMPARE_METRICS = ("dice", "nsd", "iou", "hd95", "assd", "rvd")


class RunFolderError(SamliverError):
    """The output folder holds another run, or a resume does not match it."""


# ------------------------------------------------------------------------------ helpers

def to_bytes(obj, strict: bool = False) -> bytes:
    """JSON bytes; ``strict`` writes NaN as null and infinities as the strings "inf"/"-inf"."""
    if strict:
        obj = _strict(obj)
    return (json.dumps(obj, indent=2, allow_nan=not strict) + "\n").encode()


def _strict(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) else ("inf" if obj == math.inf else "-inf") if math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def identity_key(identity: dict) -> str:
    """sha256 of a run's identity (what must match for a resume)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    write_bytes_atomic(path, buffer.getvalue().encode())


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV written by `write_csv`; numbers as floats, empty cells as None."""
    def parse(text: str):
        if text == "":
            return None
        try:
            return float(text)
        except ValueError:
            return text
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: (v if k in ("case", "target", "setting", "kind", "size_bin") else parse(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------ run folder

class RunFolder:
    """One evaluation run's folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cases = self.root / CASES_DIR
        self.figures = self.root / FIGURES_DIR

    def existing(self) -> dict | None:
        """The ``run.json`` of a run already in the folder, or None."""
        path = self.root / RUN_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{path}: unreadable run record ({exc}); use --force to replace the run") from None

    def check(self, resume: bool, force: bool) -> None:
        """Refuse a folder that holds another run unless ``resume`` or ``force``."""
        if resume and force:
            raise RunFolderError("--resume and --force exclude each other")
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"{self.root}: exists and is not a folder")
        old = self.existing()
        if old is not None and not (resume or force):
            model = old.get("model", {}).get("name", "?")
            settings = ",".join(s["name"] for s in old.get("settings", []))
            raise RunFolderError(f"{self.root}: holds another run ({model}, prompts {settings}, "
                                 f"{old.get('status', '?')}); pass --resume to continue it or --force to replace it")

    def open(self, config: dict, resume: bool, force: bool) -> None:
        """Start (or continue) the run described by ``config``; with ``force`` clear a previous run's outputs."""
        old = self.existing()
        if old is not None and resume and old.get("key") != config["key"]:
            mine, theirs = config["identity"], old.get("identity", {})
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)) or ["key"]
            raise RunFolderError(f"{self.root}: cannot resume: the run there differs in {', '.join(differ)}; "
                                 "use --force to replace it or another output folder")
        if old is not None and force:
            for name in OUTPUTS:
                path = self.root / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self.cases.mkdir(parents=True, exist_ok=True)
        if old is not None and resume:
            config["created"] = old.get("created", config["created"])
        self.write_run(config)

    def write_run(self, config: dict) -> None:
        write_bytes_atomic(self.root / RUN_FILE, to_bytes(config, strict=True))

    def stem(self, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"

    def load_case(self, name: str, key: str) -> dict | None:
        """A finished case's record when it belongs to the run ``key`` (else None: recompute)."""
        path = self.cases / f"{self.stem(name)}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        ok = record.get("key") == key and record.get("case") == name
        return record if ok and (self.cases / f"{self.stem(name)}.npz").is_file() else None

    def save_case(self, record: dict, overlay: dict[str, np.ndarray]) -> None:
        """Write the overlay arrays, then the record (its presence marks the case done)."""
        stem = self.stem(record["case"])
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **overlay)
        write_bytes_atomic(self.cases / f"{stem}.npz", buffer.getvalue())
        write_bytes_atomic(self.cases / f"{stem}.json", to_bytes(record))

    def load_overlay(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.cases / f"{self.stem(name)}.npz") as data:
            return {k: data[k] for k in data.files}


# ------------------------------------------------------------------------------ summary

def describe(values) -> dict:
    """``n`` (finite values), ``mean``, ``sd`` (sample), ``median``; ``n_nan`` undefined and ``n_inf``
    infinite values (surface distances to an empty mask) are counted, not averaged."""
    arr = np.array([np.nan if v is None else v for v in values], np.float64)
    finite = arr[np.isfinite(arr)]
    return {"n": int(finite.size), "mean": float(finite.mean()) if finite.size else math.nan,
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan),
            "median": float(np.median(finite)) if finite.size else math.nan,
            "n_nan": int(np.isnan(arr).sum()), "n_inf": int(np.isinf(arr).sum())}


def summarize(rows: list[dict], lesion_rows: list[dict], settings: list[str], targets: list[str]) -> dict:
    """Per setting and target: metric statistics over cases with a non-empty reference, the global
    (pooled) overlap, empty-reference cases, and for tumours pooled lesion detection by size."""
    from .lesions import SIZE_BINS, DetectionCounts
    from .metrics import OverlapAccumulator

    out: dict = {}
    for setting in settings:
        for target in targets:
            sel = [r for r in rows if r["setting"] == setting and r["target"] == target]
            if not sel:
                continue
            scored = [r for r in sel if r["ref_voxels"] > 0]
            empty = [r for r in sel if r["ref_voxels"] == 0]
            pooled = OverlapAccumulator(tp=sum(int(r["tp_voxels"]) for r in sel),
                                        n_pred=sum(int(r["pred_voxels"]) for r in sel),
                                        n_ref=sum(int(r["ref_voxels"]) for r in sel),
                                        dice_per_case=[r["dice"] for r in sel])
            entry = {"cases": len(scored), "empty_reference_cases": len(empty),
                     "empty_reference_correct": sum(r["pred_voxels"] == 0 for r in empty),
                     "global": {"dice": pooled.global_dice, "iou": pooled.global_iou, "rvd": pooled.global_rvd},
                     "metrics": {m: describe(r.get(m) for r in scored) for m in SUMMARY_METRICS
                                 if any(r.get(m) is not None for r in scored)}}
            if target == "tumour":
                counts = {kind: sum((DetectionCounts(int(r["lesions_ref"]), int(r["lesions_pred"]),
                                                     int(r[f"lesion_{kind}_ref"]), int(r[f"lesion_{kind}_pred"]))
                                     for r in sel), DetectionCounts()) for kind in ("tp", "overlap")}
                entry["detection"] = {("iou" if k == "tp" else "any_overlap"): {
                    "lesions_ref": c.n_ref, "lesions_pred": c.n_pred, "precision": c.precision,
                    "recall": c.recall, "f1": c.f1} for k, c in counts.items()}
                les = [r for r in lesion_rows if r["setting"] == setting and r["kind"] == "reference"]
                fps = [r for r in lesion_rows
                       if r["setting"] == setting and r["kind"] == "predicted" and not r["detected"]]
                entry["by_size"] = {name: {
                    "lesions": len(b := [r for r in les if r["size_bin"] == name]),
                    "recall": describe([float(r["detected"]) for r in b])["mean"],
                    "recall_any_overlap": describe([float(r["overlapped"]) for r in b])["mean"],
                    "dice": describe([r["dice"] for r in b])["mean"],
                    "false_positives": sum(r["size_bin"] == name for r in fps)} for name, _, _ in SIZE_BINS}
            out.setdefault(setting, {})[target] = entry
    return out


def _num(value, spec: str = ".3f") -> str:
    """A number for a Markdown cell; "–" where it is undefined."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _fmt(stats: dict | None, digits: int = 3) -> str:
    if not stats or not stats["n"]:
        return "–"
    text = f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f} ({stats['median']:.{digits}f})"
    return text + (f" [{stats['n_inf']}×∞]" if stats.get("n_inf") else "")


def summary_markdown(summary: dict, config: dict, timings: dict) -> str:
    """``summary.md``: one table per target (prompt setting × metric: mean ± sd (median)), lesion detection."""
    model = config["model"]
    data = config["data"]
    lines = [f"# Evaluation: {model['name']}", "",
             f"- checkpoint: {model.get('checkpoint') or '-'} "
             f"(sha256 {model.get('checkpoint_sha256') or 'random weights'})",
             f"- adapter: {(model.get('adapter') or {}).get('strategy', 'none')}",
             f"- data: {data['spec']} ({len(data['cases'])} cases, split {data['split']})",
             f"- samliver {config['samliver_version']}; cases computed in {timings.get('cases_s', 0):.1f} s, of which "
             f"encoder {timings.get('encode_s', 0):.1f} s "
             f"({timings.get('slices_encoded', 0)} slices encoded once each), "
             f"metrics {timings.get('metrics_s', 0):.1f} s", "",
             "Cells: mean ± sd (median) over cases whose reference is not empty (cases with an empty reference are "
             "counted beside n: prompted settings have nothing to prompt there); [k×∞]: cases with an empty "
             "prediction, whose surface distance is infinite, left out of the statistics. Global Dice pools all "
             "voxels of all cases. Empty-mask values follow samliver.evaluation.metrics.", ""]
    metrics = [("dice", "Dice"), ("iou", "IoU"), ("voe", "VOE"), ("rvd", "RVD"), ("assd", "ASSD mm"),
               ("hd95", "HD95 mm"), ("nsd", f"NSD@{config['nsd_tolerance_mm']:g}mm")]
    for target in config["targets"]:
        extra = ("volume_error_ml", "vol. err. mL") if target == "liver" else ("recist_abs_error_mm", "RECIST err. mm")
        cols = metrics + [extra]
        lines += [f"## {target}", "", "| setting | n | " + " | ".join(c for _, c in cols) + " | global Dice |",
                  "|---" * (len(cols) + 3) + "|"]
        for setting, per in summary.items():
            if target in per:
                e = per[target]
                cells = [_fmt(e["metrics"].get(m), 1 if m.endswith(("_ml", "_mm")) else 3) for m, _ in cols]
                n = str(e["cases"])
                if e["empty_reference_cases"]:
                    n += f" (+{e['empty_reference_cases']} empty ref., {e['empty_reference_correct']} predicted empty)"
                lines.append(f"| {setting} | {n} | " + " | ".join(cells) + f" | {_num(e['global']['dice'])} |")
        lines.append("")
        if target == "tumour":
            lines += ["Lesion detection (LiTS: IoU > 0.5; pooled over cases), recall per size bin:", "",
                      "| setting | lesions | F1 | precision | recall | recall (any overlap) "
                      "| <10mm | 10-20mm | >20mm |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for setting, per in summary.items():
                if "tumour" in per:
                    d, b = per["tumour"]["detection"], per["tumour"]["by_size"]
                    bins = " | ".join(f"{_num(v['recall'], '.2f')} (n={v['lesions']})" if v["lesions"] else "–"
                                     for v in b.values())
                    lines.append(f"| {setting} | {d['iou']['lesions_ref']} | {_num(d['iou']['f1'])} | "
                                 f"{_num(d['iou']['precision'])} | {_num(d['iou']['recall'])} | "
                                 f"{_num(d['any_overlap']['recall'])} | {bins} |")
            lines.append("")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ compare

def compare_runs(run1: str | Path, run2: str | Path, metrics=COMPARE_METRICS) -> list[dict]:
    """Per setting, target and metric: both runs' means and the paired mean difference (run2 - run1)
    over the cases both runs scored (non-empty reference, finite values)."""
    tables = []
    for run in (run1, run2):
        path = Path(run) / PER_CASE
        if not path.is_file():
            raise RunFolderError(f"{run}: no {PER_CASE}; not a finished evaluation run folder")
        tables.append(read_csv(path))
    index = [{(r["setting"], r["target"], r["case"]): r for r in t if r["ref_voxels"]} for t in tables]
    groups = sorted({k[:2] for k in index[0]} & {k[:2] for k in index[1]})
    out = []
    for setting, target in groups:
        for m in metrics:
            pairs = [(index[0][k].get(m), index[1].get(k, {}).get(m)) for k in index[0] if k[:2] == (setting, target)]
            pairs = [(a, b) for a, b in pairs
                     if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
            one = describe(r.get(m) for k, r in index[0].items() if k[:2] == (setting, target))
            two = describe(r.get(m) for k, r in index[1].items() if k[:2] == (setting, target))
            diff = describe(b - a for a, b in pairs)
            out.append({"setting": setting, "target": target, "metric": m, "run1": one["mean"], "run2": two["mean"],
                        "delta": two["mean"] - one["mean"], "paired_delta": diff["mean"], "paired_sd": diff["sd"],
                        "paired_n": diff["n"]})
    return out


def format_compare(rows: list[dict], run1, run2) -> str:
    lines = [f"run1: {run1}", f"run2: {run2}", "",
             "| setting | target | metric | run1 | run2 | run2 - run1 | paired Δ ± sd (n) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['target']} | {r['metric']} | {_num(r['run1'], '.4f')} | "
                     f"{_num(r['run2'], '.4f')} | {_num(r['delta'], '+.4f')} | "
                     f"{_num(r['paired_delta'], '+.4f')} ± {_num(r['paired_sd'], '.4f')} ({r['paired_n']}) |")
    if not rows:
        lines.append("| (no setting and target in common) | | | | | | |")
    return "\n".join(lines)
