"""The dataset folders of self-training: the labelled cases, the unlabelled CTs, and each round's
pseudo-labelled union, all as plain ``images/`` + ``labels/`` folders that `load_dataset` reads.

A folder is written under a temporary name and renamed when whole (`replace_dir`), so a reader
never sees half of one. Files that already exist on disk are linked, not copied: labelled NIfTI
cases whose labels need no mapping link to their source files, every round links to ``labelled/``,
and a pseudo-labelled case links to its source NIfTI; only generated data (phantoms), mapped labels
and the pseudo-labels themselves are written (`save_image` rounds HU to int16; `save_mask` writes
on the source file's own grid).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from samliver.atomic import write_bytes_atomic
from samliver.data import load_dataset, save_split
from samliver.data.case import LIVER, TUMOR
from samliver.data.layouts import detect_layout, nifti_stem
from samliver.errors import DatasetError
from samliver.io import CTVolume, load_ct, save_image, save_mask
from samliver.io.dicom import is_dicom_file

from .run_folder import replace_dir

SPLIT_FILE = "split.json"
RECORDS_FILE = "pseudo_labels.json"


@dataclass
class UnlabelledCase:
    """One unlabelled CT; ``load()`` reads it: ``(ct, label or None)`` (a label only where the source has
    one: it is never trained on, only compared with the pseudo-labels)."""

    name: str
    load: Callable[[], "tuple[CTVolume, np.ndarray | None]"]


def _dataset_case(dataset: Any, name: str) -> tuple[CTVolume, np.ndarray]:
    case = dataset[name]
    return case.image, case.label


def _is_dataset(spec: str) -> bool:
    if spec == "phantom" or spec.startswith(("phantom:", "phantom?")):
        return True
    root = Path(spec)
    if root.name == "dataset.json" and root.is_file():
        return True
    if not root.is_dir():  # detect_layout raises FileNotFoundError / NotADirectoryError there
        return False
    try:
        detect_layout(root)
    except DatasetError:
        return False
    return True


def open_unlabelled(spec: str) -> list[UnlabelledCase]:
    """The CTs ``spec`` names: a dataset (`load_dataset` spec or folder) or a folder of CT files, each a
    ``.nii`` / ``.nii.gz`` file or a sub-folder holding a DICOM series (named by file stem / folder name).

    Raises:
        DatasetError: no such folder, a file, or a folder with no CT in it.
    """
    if _is_dataset(spec):
        dataset = load_dataset(spec)
        return [UnlabelledCase(name, partial(_dataset_case, dataset, name)) for name in dataset.names]
    root = Path(spec)
    if not root.exists():
        raise DatasetError(f"{spec}: no such unlabelled-data folder or dataset")
    if not root.is_dir():
        raise DatasetError(f"{spec}: unlabelled data must be a folder (of CT files / DICOM series folders) "
                           "or a dataset, not a file")
    cases: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        stem = nifti_stem(path) if path.is_file() else None
        if stem is None and path.is_dir() and any(p.is_file() and is_dicom_file(p) for p in path.iterdir()):
            stem = path.name
        if stem is not None:
            if stem in cases:
                raise DatasetError(f"{root}: two CTs named {stem} ({cases[stem].name}, {path.name})")
            cases[stem] = path
    if not cases:
        raise DatasetError(f"{root}: no CT here (expected .nii / .nii.gz files or DICOM series folders)")
    return [UnlabelledCase(name, partial(lambda p: (load_ct(p), None), path)) for name, path in cases.items()]


def _link(target: Path, link: Path, relative: bool = False) -> None:
    """A symbolic link ``link`` -> ``target`` (``relative``: by a relative path, for links that stay
    inside the run folder when it moves); a copy where the file system has no links."""
    try:
        os.symlink(os.path.relpath(target, link.parent) if relative else Path(target).resolve(), link)
    except OSError:
        shutil.copy2(target, link)


def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"


def _start(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True)
    return tmp


def write_labelled(dataset: Any, split: dict[str, list[str]], folder: Path) -> Path:
    """Write the labelled cases of ``split`` into ``folder`` (``images/``, ``labels/``, ``split.json``).

    Cases of a NIfTI dataset whose labels are already samliver's classes link to their files; others
    (phantoms, mapped labels) are written as NIfTI.
    """
    tmp = _start(folder)
    refs = {ref.name: ref for ref in getattr(dataset, "_refs", ())}  # file listing, as the slice cache reads it
    linkable = dataset.layout != "phantom" and all(k == v for k, v in dataset.label_map.items())
    for name in (n for part in ("train", "val", "test") for n in split.get(part, [])):
        ref = refs.get(name)
        if linkable and ref is not None and ref.image is not None and ref.label is not None:
            _link(Path(ref.image), tmp / "images" / f"{name}{_suffix(Path(ref.image))}")
            _link(Path(ref.label), tmp / "labels" / f"{name}{_suffix(Path(ref.label))}")
            continue
        case = dataset[name]
        save_image(case.image, tmp / "images" / f"{name}.nii.gz")
        save_mask(case.label, like=case.image, path=tmp / "labels" / f"{name}.nii.gz")
    save_split(split, tmp / SPLIT_FILE)
    replace_dir(tmp, folder)
    return folder


def _dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    total = int(pred.sum()) + int(truth.sum())
    return None if not truth.any() else round(2.0 * int((pred & truth).sum()) / total, 6)


def write_pseudo(labelled: Path, unlabelled: Sequence[UnlabelledCase], folder: Path,
                 label_case: Callable[[CTVolume, str, int], Any]) -> dict[str, Any]:
    """Pseudo-label ``unlabelled`` and write the union with ``labelled`` into ``folder``.

    Args:
        labelled: a folder from `write_labelled` (its cases are linked, its split extended).
        label_case: ``(ct, case name, case index) -> PseudoLabels`` (`pseudo_label` with the teacher).

    Writes ``images/``, ``labels/``, ``uncertain/`` (uint8 0/1 masks of dropped objects' voxels),
    ``split.json`` (the labelled split, its train part extended by the pseudo-labelled cases that kept
    at least one object) and ``pseudo_labels.json`` (per case: counts, every object's verdict, and where
    the source has labels, the pseudo-labels' Dice against them). Returns ``pseudo_labels.json``'s content.
    """
    tmp = _start(folder)
    (tmp / "uncertain").mkdir()
    for sub in ("images", "labels"):
        for path in sorted((labelled / sub).iterdir()):
            _link(path, tmp / sub / path.name, relative=True)
    split = json.loads((labelled / SPLIT_FILE).read_text(encoding="utf-8"))
    taken = {n for part in split.values() for n in part}
    cases = []
    for index, case in enumerate(unlabelled):
        if case.name in taken:
            raise DatasetError(f"unlabelled case {case.name} is also a labelled case; give the unlabelled CTs "
                               "other names (other phantom seeds)")
        ct, truth = case.load()
        result = label_case(ct, case.name, index)
        entry: dict[str, Any] = {"case": case.name, **result.summary(),
                                 "objects": [o.as_json() for o in result.objects]}
        if truth is not None:
            entry["dice_vs_truth"] = {"liver": _dice(result.label >= LIVER, truth >= LIVER),
                                      "tumor": _dice(result.label == TUMOR, truth == TUMOR)}
        entry["written"] = bool(result.label.any())
        if entry["written"]:
            source = ct.source
            if source is not None and source.kind == "nifti":
                _link(Path(source.path), tmp / "images" / f"{case.name}{_suffix(Path(source.path))}")
            else:
                save_image(ct, tmp / "images" / f"{case.name}.nii.gz")
            save_mask(result.label, like=ct, path=tmp / "labels" / f"{case.name}.nii.gz")
            save_mask(result.uncertain, like=ct, path=tmp / "uncertain" / f"{case.name}.nii.gz")
            split["train"] = list(split.get("train", [])) + [case.name]
        cases.append(entry)
    save_split(split, tmp / SPLIT_FILE)
    record = {"cases": cases, "written": [c["case"] for c in cases if c["written"]], "summary": _totals(cases)}
    write_bytes_atomic(tmp / RECORDS_FILE, (json.dumps(record, indent=1) + "\n").encode())
    replace_dir(tmp, folder)
    return record


def _totals(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Kept / dropped objects over all cases, and the mean Dice of the pseudo-labels against any truth."""
    out: dict[str, Any] = {"cases": len(cases), "written": sum(c["written"] for c in cases)}
    for part in ("kept", "dropped"):
        out[part] = {k: sum(c[part].get(k, 0) for c in cases) for k in ("liver", "tumor")}
    for cls in ("liver", "tumor"):
        values = [c["dice_vs_truth"][cls] for c in cases if c.get("dice_vs_truth", {}).get(cls) is not None]
        out[f"{cls}_dice_vs_truth"] = round(float(np.mean(values)), 6) if values else None
    return out
