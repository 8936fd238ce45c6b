"""Dataset folder layouts: detect which one a folder uses and list its cases without reading them.

Four layouts are recognised, tried in this order:

- ``msd``: Medical Segmentation Decathlon, a ``dataset.json`` with a ``"training"`` list
  (also nnU-Net v1); see `samliver.data.msd`.
- ``nnunet``: nnU-Net v2 raw, a ``dataset.json`` with ``"channel_names"`` and ``"file_ending"``.
- ``plain``: ``images/`` and ``labels/`` folders whose NIfTI files pair up by name.
- ``lits``: LiTS ``volume-N.nii[.gz]`` / ``segmentation-N.nii[.gz]``, in one folder or spread
  over subfolders (``Training Batch 1/``, ...).

A scan yields a `DatasetIndex`: one `CaseRef` per case (its files, or the reason it cannot be
read) and the raw label values the dataset declares. Mapping those to samliver's classes is
`samliver.data.datasets`' job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from samliver.errors import DatasetError

LAYOUTS = ("msd", "nnunet", "plain", "lits")

# LiTS and the plain layout already use samliver's classes
STANDARD_LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "tumor"}

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
_LITS = re.compile(r"^(?P<kind>volume|segmentation)-(?P<id>\d+)\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are, found without reading them.

    Attributes:
        name: the case's name within its dataset (the image's file name without suffix, and for
            nnU-Net without the ``_0000`` channel suffix).
        image: the CT file (None when it is missing).
        label: the label file (None when it is missing).
        problem: why the case cannot be read (a missing file), or None.
        seed: the generator seed for phantom cases (None for files).
    """

    name: str
    image: Path | None = None
    label: Path | None = None
    problem: str | None = None
    seed: int | None = None


@dataclass
class DatasetIndex:
    """What a layout scan found.

    Attributes:
        root: the dataset folder.
        layout: one of `LAYOUTS`.
        cases: one `CaseRef` per case, in natural name order (``liver_2`` before ``liver_10``).
        labels: raw label value → name as the dataset declares it (``{2: "Tumour"}``).
        title: the dataset's own name (dataset.json ``"name"``) or the folder's name.
    """

    root: Path
    layout: str
    cases: list[CaseRef]
    labels: dict[int, str] = field(default_factory=lambda: dict(STANDARD_LABELS))
    title: str = ""


def scan(root: Path, layout: str | None = None) -> DatasetIndex:
    """List the cases of the dataset folder ``root``, detecting its layout unless ``layout`` is given.

    Raises `DatasetError` (naming the folder) when the folder is missing, empty, or in no
    recognised layout, and for dataset.json faults; per-case faults (a missing label file) are
    recorded in `CaseRef.problem` instead.
    """
    if not root.exists():
        raise DatasetError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; a dataset is a folder (MSD, nnU-Net, LiTS or images/ + labels/)")
    if layout is not None and layout not in LAYOUTS:
        raise DatasetError(f"{root}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    found = layout or detect_layout(root)
    if found in ("msd", "nnunet"):
        from samliver.data.msd import scan_dataset_json

        index = scan_dataset_json(root, found)
    elif found == "plain":
        index = _scan_plain(root)
    else:
        index = _scan_lits(root)
    if not index.cases:
        raise DatasetError(f"{root}: {found} layout but no cases found")
    _check_unique(index)
    index.cases.sort(key=lambda ref: natural_key(ref.name))
    return index


def detect_layout(root: Path) -> str:
    """The layout of dataset folder ``root``: ``"msd"``, ``"nnunet"``, ``"plain"`` or ``"lits"``."""
    if (root / "dataset.json").is_file():
        from samliver.data.msd import dataset_json_layout

        return dataset_json_layout(root)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "plain"
    if any(_LITS.match(p.name) for p in _walk_files(root)):
        return "lits"
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(f"{root}: the folder is empty")
    raise DatasetError(
        f"{root}: no recognised dataset layout; expected dataset.json (MSD or nnU-Net v2), "
        "images/ + labels/ folders, or LiTS volume-N.nii / segmentation-N.nii files"
    )


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``case_2`` before ``case_10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def nifti_stem(path: Path) -> str | None:
    """``liver_0`` for ``liver_0.nii.gz``; None for a file that is not NIfTI or is hidden."""
    if path.name.startswith("."):  # ._liver_0.nii.gz: macOS resource forks ship inside MSD tars
        return None
    match = _NIFTI.match(path.name)
    return match["stem"] if match else None


def pair_problem(root: Path, name: str, image: Path | None, label: Path | None) -> str | None:
    """The one-line reason a case with these files cannot be read, or None if both exist."""
    where = f"dataset {root}, case {name}"
    if image is None or not image.is_file():
        missing = f": image file {_rel(root, image)} is missing" if image is not None else ": no image file"
        return where + missing + (f" (label {_rel(root, label)} exists)" if label is not None and label.is_file() else "")
    if label is None or not label.is_file():
        return where + (f": label file {_rel(root, label)} is missing" if label is not None else ": no label file")
    return None


def _scan_plain(root: Path) -> DatasetIndex:
    images = _nifti_files(root / "images")
    labels = _nifti_files(root / "labels")
    cases = []
    for name in sorted(set(images) | set(labels)):
        image = images.get(name)
        label = labels.get(name) or (root / "labels" / (name + _suffix(image)) if image is not None else None)
        cases.append(CaseRef(name, image, label, pair_problem(root, name, image, label)))
    return DatasetIndex(root, "plain", cases, title=root.name)


def _scan_lits(root: Path) -> DatasetIndex:
    found: dict[str, dict[int, list[Path]]] = {"volume": {}, "segmentation": {}}
    for path in _walk_files(root):
        match = _LITS.match(path.name)
        if match:
            found[match["kind"].lower()].setdefault(int(match["id"]), []).append(path)
    cases = []
    for number in sorted(set(found["volume"]) | set(found["segmentation"])):
        name = f"volume-{number}"
        for kind in ("volume", "segmentation"):
            if len(found[kind].get(number, [])) > 1:
                paths = ", ".join(str(_rel(root, p)) for p in found[kind][number])
                raise DatasetError(f"dataset {root}, case {name}: {kind}-{number} appears more than once ({paths})")
        image = found["volume"].get(number, [None])[0]
        label = found["segmentation"].get(number, [None])[0]
        if label is None and image is not None:  # name the file a user should add
            label = image.with_name(f"segmentation-{number}{_suffix(image)}")
        cases.append(CaseRef(name, image, label, pair_problem(root, name, image, label)))
    return DatasetIndex(root, "lits", cases, title=root.name)


def _suffix(path: Path) -> str:
    """``.nii.gz`` or ``.nii``, as the file spells it."""
    return path.name[path.name.lower().rindex(".nii"):]


def _nifti_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = nifti_stem(path)
        if stem is None or not path.is_file():
            continue
        if stem in out:
            raise DatasetError(f"{folder}: two files for case {stem} ({out[stem].name}, {path.name})")
        out[stem] = path
    return out


def _walk_files(root: Path, _seen: set[Path] | None = None) -> Iterator[Path]:
    """Files under ``root``, skipping hidden files and folders; sorted for determinism.

    Each folder is visited once, so symlinked folders that loop back are harmless.
    """
    seen = set() if _seen is None else _seen
    real = root.resolve()
    if real in seen:
        return
    seen.add(real)
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield from _walk_files(path, seen)
        elif path.is_file():
            yield path


def _check_unique(index: DatasetIndex) -> None:
    seen: set[str] = set()
    for ref in index.cases:
        if ref.name in seen:
            raise DatasetError(f"dataset {index.root}: case {ref.name} is listed more than once")
        seen.add(ref.name)


def _rel(root: Path, path: Path | None) -> Path | None:
    if path is None:
        return None
    try:
        return path.relative_to(root)
    except ValueError:
        return path
