"""The preprocessed case cache: each case windowed (or kept as HU), optionally resampled in-plane, as ``.npy``.

Layout of a cache folder::

    index.json                          format, settings, one entry per case (see `CaseCache`)
    cases/<name>.<key>.image.npy        (Z, H, W) uint8 windowed grey values, or int16 HU
    cases/<name>.<key>.label.npy        (Z, H, W) uint8 labels 0 background, 1 liver, 2 tumour

``key`` hashes the case's source fingerprint and the settings, so a case's files are never
overwritten in place: a rebuild writes new files (temp + rename, `samliver.io.save.write_atomic`),
then the index (also atomically), then removes files no entry names. An interrupted `prepare_cache`
leaves the previous index and its files intact. Arrays open with ``np.load(mmap_mode="r")``, so a
training epoch reads only the slices it samples.

Invalidation: a case is rebuilt when its source fingerprint changes or when the settings change
(then every case is rebuilt; entries made with other settings are dropped). For a
`samliver.data.Dataset` the fingerprint is known without reading the case: image and label file
path + size + mtime, or a phantom's preset/seed/`PHANTOM_VERSION`, plus the dataset's label mapping
and ``has_liver``. Cases handed over as a plain sequence of `Case` are fingerprinted by a digest of
their arrays (`source_fingerprint`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from samliver.data.case import LIVER, TUMOR, Case
from samliver.data.intensity import Window, window_for, window_to_uint8
from samliver.errors import SamliverError
from samliver.io.save import write_atomic

CACHE_FORMAT = 1
INDEX_FILE = "index.json"


class CacheError(SamliverError, ValueError):
    """A cache folder is missing, unreadable or was built by another format; or a case failed (strict)."""


@dataclass(frozen=True)
class CacheSettings:
    """How cases are preprocessed.

    Attributes:
        window: CT window ``(lo, hi)`` HU (or a name / ``"LO,HI"`` for `window_for`). With ``dtype="uint8"``
            the image is stored windowed; with ``"int16"`` it is the default window for readers.
        dtype: ``"uint8"`` (windowed grey values: compact, one window) or ``"int16"`` (rounded HU: twice
            the size, any window at read time).
        spacing: resample in-plane to this spacing in mm (rows and columns); None keeps the source's.
        size: resample in-plane to ``size x size`` pixels instead (exclusive with ``spacing``).
    """

    window: Window = (-160.0, 240.0)
    dtype: str = "uint8"
    spacing: float | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", window_for(self.window))
        if self.dtype not in ("uint8", "int16"):
            raise ValueError(f"cache dtype must be 'uint8' or 'int16'; got {self.dtype!r}")
        if self.spacing is not None and self.size is not None:
            raise ValueError("cache settings: give spacing or size, not both")
        if self.spacing is not None and not float(self.spacing) > 0:
            raise ValueError(f"cache spacing must be positive mm; got {self.spacing}")
        if self.size is not None and int(self.size) < 1:
            raise ValueError(f"cache size must be a positive number of pixels; got {self.size}")

    def as_json(self) -> dict[str, Any]:
        return {"window": list(self.window), "dtype": self.dtype,
                "spacing": None if self.spacing is None else float(self.spacing),
                "size": None if self.size is None else int(self.size)}


@dataclass
class CaseCache:
    """One cached case. ``image`` and ``label`` open lazily as read-only memory maps (per process).

    Attributes:
        name: the case name.
        shape: ``(Z, H, W)`` after in-plane resampling.
        spacing: ``(z, y, x)`` mm after resampling.
        source_shape, source_spacing: the case's grid before resampling.
        has_liver: False for cases from datasets without a liver label (tumour targets only).
        liver_slices, tumor_slices: ``(Z,)`` bool, slices with any liver (label 1 or 2; always False
            when ``has_liver`` is False) / any tumour (label 2) voxel.
        fingerprint: the source fingerprint the case was built from.
    """

    root: Path
    name: str
    key: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    has_liver: bool
    liver_slices: np.ndarray
    tumor_slices: np.ndarray
    fingerprint: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_path(self) -> Path:
        return self.root / "cases" / f"{self.name}.{self.key}.image.npy"

    @property
    def label_path(self) -> Path:
        return self.root / "cases" / f"{self.name}.{self.key}.label.npy"

    @property
    def image(self) -> np.ndarray:
        """``(Z, H, W)`` uint8 windowed grey values or int16 HU (see the cache's settings)."""
        return self._open("image", self.image_path)

    @property
    def label(self) -> np.ndarray:
        """``(Z, H, W)`` uint8 labels 0/1/2."""
        return self._open("label", self.label_path)

    def _open(self, kind: str, path: Path) -> np.ndarray:
        if kind not in self._arrays:
            try:
                self._arrays[kind] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheError(f"{path}: cannot read cached {kind} ({exc}); run prepare again") from exc
        return self._arrays[kind]

    def __getstate__(self) -> dict[str, Any]:  # memory maps are reopened in each DataLoader worker
        return {**self.__dict__, "_arrays": {}}

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "spacing": list(self.spacing),
                "source_shape": list(self.source_shape), "source_spacing": list(self.source_spacing),
                "has_liver": self.has_liver, "liver_slices": _bits(self.liver_slices),
                "tumor_slices": _bits(self.tumor_slices), "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, root: Path, name: str, d: Mapping[str, Any]) -> CaseCache:
        return cls(root, name, d["key"], tuple(d["shape"]), tuple(d["spacing"]), tuple(d["source_shape"]),
                   tuple(d["source_spacing"]), bool(d["has_liver"]), _unbits(d["liver_slices"]),
                   _unbits(d["tumor_slices"]), dict(d["fingerprint"]))


@dataclass
class CacheIndex:
    """A cache folder: its settings and cases (``index[name]`` → `CaseCache`, in index order).

    ``built``, ``reused`` and ``skipped`` (name → reason) report what the `prepare_cache` call that
    returned this index did (empty from `open_cache`).
    """

    root: Path
    settings: CacheSettings
    cases: dict[str, CaseCache]
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Case names, in index order."""
        return list(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, name: str) -> CaseCache:
        try:
            return self.cases[name]
        except KeyError:
            raise KeyError(f"cache {self.root} has no case {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.cases

    def _write(self) -> None:
        body = {"format": CACHE_FORMAT, "settings": self.settings.as_json(),
                "cases": {n: c.to_json() for n, c in self.cases.items()}}
        write_atomic(self.root / INDEX_FILE, json.dumps(body, indent=1).encode(), compress=False)


def open_cache(out_dir: str | os.PathLike[str]) -> CacheIndex:
    """Open a cache folder made by `prepare_cache`. Raises `CacheError` if it is missing or unreadable."""
    root = Path(out_dir)
    try:
        body = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CacheError(f"{root}: not a samliver cache (no {INDEX_FILE}); run `samliver data prepare`") from None
    except (OSError, ValueError) as exc:
        raise CacheError(f"{root / INDEX_FILE}: unreadable ({exc})") from exc
    if body.get("format") != CACHE_FORMAT:
        raise CacheError(f"{root}: cache format {body.get('format')} is not {CACHE_FORMAT}; run prepare again")
    s = body["settings"]
    settings = CacheSettings(tuple(s["window"]), s["dtype"], s["spacing"], s["size"])
    return CacheIndex(root, settings, {n: CaseCache.from_json(root, n, d) for n, d in body["cases"].items()})


def prepare_cache(dataset: Sequence[Case], out_dir: str | os.PathLike[str],
                  settings: CacheSettings | Mapping[str, Any] | None = None, *, strict: bool = False,
                  progress: bool = True) -> CacheIndex:
    """Build or update the cache of ``dataset`` in ``out_dir``; cases already cached unchanged are reused.

    Args:
        dataset: a `samliver.data.Dataset` (sources are fingerprinted without reading the cases) or
            any sequence of `Case`.
        settings: `CacheSettings` or a dict of its fields; None gives the defaults (liver window, uint8).
        strict: raise `CacheError` on the first case that cannot be read; otherwise it is reported
            in ``index.skipped`` and left out.
        progress: show a tqdm progress bar.

    Returns:
        The `CacheIndex`, with ``built`` / ``reused`` / ``skipped`` filled in. Cases cached earlier with the
        same settings but absent from ``dataset`` stay in the index.
    """
    settings = settings if isinstance(settings, CacheSettings) else CacheSettings(**dict(settings or {}))
    root = Path(out_dir)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    try:
        old = open_cache(root)
        cases = dict(old.cases) if old.settings == settings else {}
    except CacheError:
        cases = {}
    index = CacheIndex(root, settings, cases)
    names = list(getattr(dataset, "names", [])) or None
    bar = tqdm(range(len(dataset)), desc="prepare cache", unit="case", disable=not progress)
    for i in bar:
        name = names[i] if names else None
        try:
            fp = _ref_fingerprint(dataset, i) if names else None
            case = None
            if fp is None:
                case = dataset[i]
                name, fp = case.name, source_fingerprint(case, dataset)
            key = _key(fp, settings)
            prev = index.cases.get(name)
            if prev is not None and prev.key == key and prev.image_path.is_file() and prev.label_path.is_file():
                index.reused.append(name)
                continue
            case = case if case is not None else dataset[i]
            index.cases[name] = _build(case, root, key, fp, settings)
        except (SamliverError, OSError, ValueError) as exc:
            if strict:
                raise CacheError(f"case {name or i}: {exc}") from exc
            index.skipped[name or str(i)] = str(exc)
            index.cases.pop(name, None)  # type: ignore[arg-type]
            continue
        index.built.append(name)
        index._write()
    index._write()
    _remove_orphans(index)
    return index


def source_fingerprint(case: Case, dataset: Any = None) -> dict[str, Any]:
    """A case's fingerprint from its content: a sha256 of image, label and spacing, plus ``has_liver``
    and the dataset's label mapping. Used for cases handed over in memory (anything but a
    `samliver.data.Dataset`, whose cases are fingerprinted by their files or phantom recipe unread),
    since such arrays may have been changed after they were read."""
    digest = hashlib.sha256(np.ascontiguousarray(case.image.array).tobytes())
    digest.update(np.ascontiguousarray(case.label).tobytes())
    digest.update(repr(tuple(float(s) for s in case.image.spacing)).encode())
    fp: dict[str, Any] = {"sha256": digest.hexdigest(), "has_liver": bool(case.has_liver)}
    if getattr(dataset, "label_map", None) is not None:
        fp["label_map"] = {str(k): int(v) for k, v in sorted(dataset.label_map.items())}
    return fp


def _ref_fingerprint(dataset: Any, i: int) -> dict[str, Any] | None:
    """A `Dataset` case's fingerprint from its file listing, without reading it (None: read the case)."""
    refs = getattr(dataset, "_refs", None)  # samliver.data.Dataset's CaseRefs
    if refs is None or refs[i].problem:
        return None
    ref = refs[i]
    if ref.image is not None and ref.label is not None:
        fp = {"files": [_file_stat(ref.image), _file_stat(ref.label)]}
    elif ref.seed is not None and dataset.layout == "phantom":
        from samliver.data.phantom import PHANTOM_VERSION

        fp = {"phantom": dataset.title.partition(":")[2], "seed": int(ref.seed), "version": PHANTOM_VERSION}
    else:
        return None
    fp["has_liver"] = bool(dataset.has_liver)
    fp["label_map"] = {str(k): int(v) for k, v in sorted(dataset.label_map.items())}
    return fp


def _file_stat(path: str | os.PathLike[str]) -> list[Any]:
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _key(fp: Mapping[str, Any], settings: CacheSettings) -> str:
    text = json.dumps({"format": CACHE_FORMAT, "fp": fp, "settings": settings.as_json()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _build(case: Case, root: Path, key: str, fp: dict[str, Any], settings: CacheSettings) -> CaseCache:
    """Preprocess one case and write its two arrays (each atomically)."""
    hu, label, spacing = resample_inplane(case.image.array, case.label, case.image.spacing,
                                          target_spacing=settings.spacing, size=settings.size)
    if settings.dtype == "uint8":
        image = window_to_uint8(hu, settings.window)
    else:
        image = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    tumor = (label == TUMOR).any(axis=(1, 2))
    liver = (label >= LIVER).any(axis=(1, 2)) if case.has_liver else np.zeros(label.shape[0], bool)
    entry = CaseCache(root, case.name, key, tuple(image.shape), spacing, tuple(case.image.shape),
                      tuple(case.image.spacing), bool(case.has_liver), liver, tumor, fp)
    for array, path in ((image, entry.image_path), (label.astype(np.uint8), entry.label_path)):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
        write_atomic(path, buf.getbuffer(), compress=False)  # type: ignore[arg-type]
    return entry


def resample_inplane(hu: np.ndarray, label: np.ndarray, spacing: Sequence[float], *,
                     target_spacing: float | None = None, size: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Resample ``(Z, Y, X)`` HU (linear) and labels (nearest) in-plane; slices are never mixed.

    Args:
        spacing: ``(z, y, x)`` mm of the input.
        target_spacing: in-plane spacing in mm to resample to (rows and columns).
        size: resample to ``size x size`` pixels instead.

    Returns:
        ``(hu (Z, H', W') float32, label (Z, H', W') uint8, (z, y', x') spacing mm)``; the input
        unchanged when neither target is given. Pixel edges stay aligned (scipy ``grid_mode``).
    """
    h, w = hu.shape[1:]
    out_hw = (h, w) if size is None else (int(size), int(size))
    if target_spacing is not None:
        out_hw = (max(1, round(h * spacing[1] / target_spacing)), max(1, round(w * spacing[2] / target_spacing)))
    if out_hw == (h, w):
        return hu, label, (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    zoom = (1.0, out_hw[0] / h, out_hw[1] / w)
    hu_r = ndimage.zoom(hu.astype(np.float32), zoom, order=1, mode="nearest", grid_mode=True)
    lab_r = ndimage.zoom(label.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True)
    new_spacing = (float(spacing[0]), float(spacing[1]) * h / out_hw[0], float(spacing[2]) * w / out_hw[1])
    return hu_r, lab_r, new_spacing


def _remove_orphans(index: CacheIndex) -> None:
    """Delete case files (and stale temp files) that no index entry names."""
    keep = {p.name for c in index.cases.values() for p in (c.image_path, c.label_path)}
    for path in (index.root / "cases").iterdir():
        if path.name not in keep and (path.name.endswith(".npy") or path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)


def _bits(flags: np.ndarray) -> str:
    return "".join("1" if f else "0" for f in np.asarray(flags, bool))


def _unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8) == ord("1")


__all__ = ["CACHE_FORMAT", "CacheError", "CacheIndex", "CacheSettings", "CaseCache", "open_cache",
           "prepare_cache", "resample_inplane", "source_fingerprint"]
