"""`load_dataset`: a folder (MSD, nnU-Net v2, LiTS, images/ + labels/) or ``phantom`` as a lazy sequence of `Case`.

Labels are mapped to samliver's classes (0 background, 1 liver, 2 tumour) through `LABEL_CLASSES`,
a table keyed by the label names a dataset declares (case-insensitive). MSD Task08 (hepatic
vessel) declares no liver: its vessels become 0, its tumours 2, and the dataset says
``has_liver=False`` so training and evaluation use tumour targets only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, overload

import numpy as np

from samliver.data.case import BACKGROUND, LIVER, TUMOR, Case
from samliver.data.layouts import CaseRef, DatasetIndex, scan
from samliver.errors import CTReadError, DatasetError
from samliver.io import CTVolume, load_ct, load_label
from samliver.io.hu import check_hu

# Declared label name → samliver class. Names are matched lower-cased with "_"/"-" read as spaces,
# a trailing plural "s" dropped, and a leading "liver "/"hepatic " qualifier dropped ("liver tumor").
LABEL_CLASSES: dict[str, int] = {
    "background": BACKGROUND,
    "liver": LIVER,
    "cancer": TUMOR,
    "tumour": TUMOR,
    "tumor": TUMOR,
    "lesion": TUMOR,
    "vessel": BACKGROUND,  # MSD Task08 hepatic vessels: not a samliver target, ignored as background
}

PHANTOM_DEFAULT_CASES = 8


@dataclass(frozen=True)
class LabelTable:
    """How a dataset's raw label values become samliver classes.

    Attributes:
        lut: ``(256,)`` uint8, raw value → class.
        declared: ``(256,)`` bool, the raw values the dataset declares.
        names: raw value → declared name.
        has_liver: whether any declared label maps to liver.
    """

    lut: np.ndarray
    declared: np.ndarray
    names: dict[int, str]
    has_liver: bool

    @property
    def mapping(self) -> dict[int, int]:
        """Declared raw value → samliver class."""
        return {value: int(self.lut[value]) for value in sorted(self.names)}

    @property
    def is_identity(self) -> bool:
        return all(int(self.lut[v]) == v for v in self.names)


def label_table(declared: Mapping[int, str], dataset: str, extra: Mapping[str, int] | None = None) -> LabelTable:
    """Build the `LabelTable` for a dataset's declared labels ``{raw value: name}``.

    ``extra`` adds or overrides name → class entries (e.g. ``{"pancreas": 0}``). A name neither
    table knows raises `DatasetError` naming ``dataset`` and the label.
    """
    table = {**LABEL_CLASSES, **{_normalise(k): int(v) for k, v in (extra or {}).items()}}
    lut = np.zeros(256, np.uint8)
    known = np.zeros(256, bool)
    for value, name in declared.items():
        cls = _lookup(table, name)
        if cls is None:
            raise DatasetError(
                f"dataset {dataset}: label {value} {name!r} is not one samliver knows "
                f"({', '.join(sorted(LABEL_CLASSES))}); pass label_names={{{name!r}: 0|1|2}} to map it"
            )
        if cls not in (BACKGROUND, LIVER, TUMOR):
            raise DatasetError(f"dataset {dataset}: label {name!r} maps to {cls}; classes are 0, 1, 2")
        lut[value], known[value] = cls, True
    has_liver = any(int(lut[v]) == LIVER for v in declared)
    return LabelTable(lut, known, dict(declared), has_liver)


class Dataset(Sequence[Case]):
    """A lazy sequence of `Case`: each case is read (or generated) when it is accessed, never cached.

    Index by position (``ds[0]``, ``ds[-1]``) or case name (``ds["liver_7"]``); a slice gives a
    `Dataset`. Attributes:

    - ``names``: case names, in natural order.
    - ``layout``: ``"msd"``, ``"nnunet"``, ``"lits"``, ``"plain"`` or ``"phantom"``.
    - ``root``: the dataset folder (None for phantoms).
    - ``has_liver``: False where the dataset has no liver label (MSD Task08): tumour targets only.
    - ``label_map``: declared raw label value → samliver class (0 background, 1 liver, 2 tumour).
    - ``label_names``: declared raw label value → the name the dataset gives it.
    - ``problems``: case → why it cannot be read, for cases found faulty while listing
      (only with ``load_dataset(..., strict=False)``; reading one raises `DatasetError`).
    """

    def __init__(self, refs: Sequence[CaseRef], reader: Callable[[CaseRef], Case], *, layout: str,
                 root: Path | None, has_liver: bool, label_map: Mapping[int, int],
                 label_names: Mapping[int, str] | None = None, title: str = "") -> None:
        self._refs = tuple(refs)
        self._by_name = {ref.name: i for i, ref in enumerate(self._refs)}
        self._reader = reader
        self.layout = layout
        self.root = root
        self.has_liver = has_liver
        self.label_map = dict(label_map)
        self.label_names = dict(label_names or {})
        self.title = title

    @property
    def names(self) -> list[str]:
        return [ref.name for ref in self._refs]

    @property
    def problems(self) -> dict[str, str]:
        return {ref.name: ref.problem for ref in self._refs if ref.problem}

    def __len__(self) -> int:
        return len(self._refs)

    @overload
    def __getitem__(self, key: int | str) -> Case: ...
    @overload
    def __getitem__(self, key: slice) -> Dataset: ...

    def __getitem__(self, key: int | str | slice) -> Case | Dataset:
        if isinstance(key, slice):
            return self._with(self._refs[key])
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"dataset {self._where()} has no case {key!r}")
            return self._reader(self._refs[self._by_name[key]])
        return self._reader(self._refs[key])

    def __iter__(self) -> Iterator[Case]:
        for ref in self._refs:
            yield self._reader(ref)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_name
        return isinstance(item, Case) and item.name in self._by_name

    def subset(self, names: Sequence[str]) -> Dataset:
        """The cases ``names``, in that order; unknown or repeated names raise `DatasetError`."""
        if isinstance(names, str):
            raise DatasetError(f"dataset {self._where()}: subset() takes a list of case names, not one string")
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise DatasetError(f"dataset {self._where()}: no cases named {', '.join(map(str, unknown))}")
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)
        if repeated:
            raise DatasetError(f"dataset {self._where()}: cases listed twice: {', '.join(repeated)}")
        return self._with([self._refs[self._by_name[n]] for n in names])

    def __repr__(self) -> str:
        return (f"Dataset(layout={self.layout!r}, root={str(self.root) if self.root else None!r}, "
                f"cases={len(self)}, has_liver={self.has_liver})")

    def _with(self, refs: Sequence[CaseRef]) -> Dataset:
        return Dataset(refs, self._reader, layout=self.layout, root=self.root, has_liver=self.has_liver,
                       label_map=self.label_map, label_names=self.label_names, title=self.title)

    def _where(self) -> str:
        return str(self.root) if self.root is not None else self.title


def load_dataset(spec: str | os.PathLike[str], *, layout: str | None = None, strict: bool = True,
                 label_names: Mapping[str, int] | None = None, n: int | None = None,
                 seed: int | None = None) -> Dataset:
    """Open a dataset folder (or make a phantom one) as a lazy `Dataset` of `Case`.

    Args:
        spec: a dataset folder (or its ``dataset.json``), in a layout detected automatically:
            MSD, nnU-Net v2 raw, LiTS, or ``images/`` + ``labels/``. Or a phantom spec:
            ``"phantom"``, ``"phantom:PRESET"``, ``"phantom:PRESET?n=8&seed=0"`` (a folder
            literally named ``phantom`` is read as ``"./phantom"`` or ``Path("phantom")``).
        layout: force a layout (``"msd"``, ``"nnunet"``, ``"lits"``, ``"plain"``) instead of detecting it.
        strict: raise `DatasetError` for the first case with a missing file (default); with
            False such cases stay listed in ``Dataset.problems`` and raise only when read.
        label_names: extra label name → class (0/1/2) entries for names `LABEL_CLASSES` lacks.
        n, seed: phantom case count and first seed (case ``i`` uses ``seed + i``); defaults 8
            and 0. Also settable in the spec's query string (see `samliver.data.generated`).

    Each case read gives ``image`` (CTVolume, HU, canonical orientation) and ``label``
    ``(Z, Y, X)`` uint8 in {0, 1, 2} on the image's grid; a label on another grid, or with
    values the dataset does not declare, raises `DatasetError` naming the case.
    """
    if isinstance(spec, str) and (spec == "phantom" or spec.startswith(("phantom:", "phantom?"))):
        from samliver.data.generated import phantom_dataset

        return phantom_dataset(spec, n=n, seed=seed)
    if n is not None or seed is not None:
        raise DatasetError(f"{spec}: n= and seed= apply only to phantom datasets")
    root = Path(spec)
    if root.name == "dataset.json" and root.is_file():
        root = root.parent
    index = scan(root, layout)
    table = label_table(index.labels, f"{index.title} ({root})", label_names)
    problems = [ref.problem for ref in index.cases if ref.problem]
    if strict and problems:
        more = f" (and {len(problems) - 1} more; `samliver data info {root}` lists them)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)
    return Dataset(index.cases, _FileReader(index, table), layout=index.layout, root=root,
                   has_liver=table.has_liver, label_map=table.mapping, label_names=table.names,
                   title=index.title)


class _FileReader:
    """Reads one case's image and label files into a `Case` (a picklable callable, for DataLoader workers)."""

    def __init__(self, index: DatasetIndex, table: LabelTable) -> None:
        self.root, self.layout, self.table = index.root, index.layout, table

    def __call__(self, ref: CaseRef) -> Case:
        where = f"dataset {self.root}, case {ref.name}"
        if ref.problem:
            raise DatasetError(ref.problem)
        assert ref.image is not None and ref.label is not None
        try:
            image = load_ct(ref.image)
            check_hu(image.array, ref.image)
        except CTReadError as exc:
            raise DatasetError(f"{where}: image: {exc}") from exc
        try:
            raw = load_label(ref.label, like=image)
        except CTReadError as exc:
            raise DatasetError(f"{where}: {_label_fault(ref.label, image, exc)}") from exc
        counts = np.bincount(raw.ravel(), minlength=256)
        present = np.flatnonzero(counts)
        undeclared = [int(v) for v in present if not self.table.declared[v]]
        if undeclared:
            declared = ", ".join(f"{v} {name}" for v, name in sorted(self.table.names.items()))
            raise DatasetError(f"{where}: label values {undeclared} are not declared (declared: {declared})")
        label = raw if self.table.is_identity else self.table.lut[raw]
        meta = {
            "dataset": str(self.root), "layout": self.layout, "image_path": str(ref.image),
            "label_path": str(ref.label), "source_label_voxels": {int(v): int(counts[v]) for v in present},
        }
        return Case(ref.name, image, label, has_liver=self.table.has_liver, meta=meta)


def _label_fault(path: Path, image: CTVolume, exc: CTReadError) -> str:
    """Why a label file failed: its grid against the image's (both in full), or the read error."""
    try:
        load_label(path)  # readable alone: the grid differs
        other = load_ct(path)
    except CTReadError:
        return f"label: {exc}"
    return (f"label {path.name} is not on the image's grid: image {_geometry(image)}; label {_geometry(other)}")


def _geometry(ct: CTVolume) -> str:
    def fmt(values: Sequence[float]) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    z, y, x = ct.shape
    text = f"shape (Z,Y,X) ({z}, {y}, {x}), spacing (z,y,x) mm {fmt(ct.spacing)}, origin mm {fmt(ct.origin)}"
    if not np.allclose(ct.direction, np.eye(3)):
        text += f", direction {fmt(ct.direction.ravel())}"
    return text


def _normalise(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _lookup(table: Mapping[str, int], name: str) -> int | None:
    key = _normalise(name)
    candidates = [key]
    for prefix in ("liver ", "hepatic "):
        if key.startswith(prefix):
            candidates.append(key[len(prefix):])
    for cand in list(candidates):
        if cand.endswith("s"):
            candidates.append(cand[:-1])
    for cand in candidates:
        if cand in table:
            return table[cand]
    return None
