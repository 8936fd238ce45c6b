"""`CTVolume` and the readers: `load_ct` for images, `load_label` for label maps on a CT's grid."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from samliver.errors import CTReadError
from samliver.io.nifti import NIFTI_SUFFIXES, is_nifti_path, read_nifti
from samliver.io.orient import Grid, Reorientation, plan_reorientation


@dataclass(frozen=True)
class SourceInfo:
    """Where a `CTVolume` came from: enough to write a mask back on the file's own grid.

    Attributes:
        path: the NIfTI file or DICOM folder read.
        kind: ``"nifti"`` or ``"dicom"``.
        grid: the file's own grid (voxel order as stored) in LPS.
        reorientation: file voxel order → canonical voxel order.
        nifti_header: a copy of the nibabel header (NIfTI sources only).
        series_uid: the SeriesInstanceUID read (DICOM sources only).
        decoder: what decoded the pixels (``"nibabel"``, ``"SimpleITK"`` or ``"pydicom"``).
        dicom_files: the series' files in file slice order ``k`` (DICOM sources only); a DICOM
            SEG output references them.
        sop_instance_uids: their SOPInstanceUIDs as read, in the same order (``""`` where empty).
    """

    path: Path
    kind: Literal["nifti", "dicom"]
    grid: Grid
    reorientation: Reorientation
    nifti_header: Any = field(default=None, repr=False)
    series_uid: str | None = None
    decoder: str = ""
    dicom_files: tuple[Path, ...] = field(default=(), repr=False)
    sop_instance_uids: tuple[str, ...] = field(default=(), repr=False)


@dataclass(eq=False)
class CTVolume:
    """A CT volume in samliver's canonical orientation, with its geometry in SimpleITK's terms.

    Attributes:
        array: ``(Z, Y, X)`` float32, HU for CT. Axis 0 runs inferior→superior, rows
            anterior→posterior, columns patient right→left: what ``SimpleITK.DICOMOrient(image,
            "LPS")`` gives, whatever orientation the file stored.
        spacing: ``(z, y, x)`` voxel size in mm (numpy axis order, unlike SimpleITK's).
        origin: ``(x, y, z)`` LPS world position in mm of ``array[0, 0, 0]``, as SimpleITK.
        direction: ``(3, 3)``; column ``a`` is the LPS unit vector of index axis ``a`` in
            SimpleITK's ``(x, y, z)`` order. The identity unless the scan is oblique.
        source: the file this was read from (None for volumes made in memory); `save_mask` uses
            it to write masks on that file's own grid.

    Derive a volume with new voxels on the same grid with ``dataclasses.replace(ct, array=...)``.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: SourceInfo | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim != 3:
            raise ValueError(f"CTVolume.array must be (Z, Y, X); got shape {self.array.shape}")
        self.spacing = _triple(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise ValueError(f"CTVolume.spacing must be positive mm; got {self.spacing}")
        self.origin = _triple(self.origin, "origin")
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` voxel counts."""
        return self.array.shape  # type: ignore[return-value]

    @property
    def slice_spacing_yx(self) -> tuple[float, float]:
        """In-plane voxel size ``(row_mm, col_mm)`` of an axial slice."""
        return self.spacing[1], self.spacing[2]

    @property
    def grid(self) -> Grid:
        """The canonical grid (SimpleITK ``(x, y, z)`` conventions)."""
        z, y, x = self.array.shape
        return Grid((x, y, z), self.spacing[::-1], self.origin, self.direction)


def load_ct(path: str | os.PathLike[str], series_uid: str | None = None) -> CTVolume:
    """Read a CT (or any scalar 3D image, label maps included) into the canonical orientation.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file, or a folder holding a DICOM series.
        series_uid: which SeriesInstanceUID to read when the folder holds several.

    A NIfTI whose dimensions past the third are all 1 (``(X, Y, Z, 1)``) is read as 3D.
    Raises `CTReadError` (one line, naming the path) for anything that is not a finite 3D image.
    """
    array, source = _read(Path(path), series_uid)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise CTReadError(f"{source.path}: {bad} voxels are NaN or infinite")
    canonical = source.reorientation.apply_to_grid(source.grid)
    return CTVolume(
        array=np.ascontiguousarray(source.reorientation.to_canonical(array), dtype=np.float32),
        spacing=canonical.spacing_xyz[::-1],
        origin=canonical.origin,
        direction=canonical.direction,
        source=source,
    )


def load_label(path: str | os.PathLike[str], like: CTVolume | None = None) -> np.ndarray:
    """Read a label map into the canonical orientation, optionally checked against a CT's grid.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file (or a DICOM folder) of integer labels 0..255.
        like: the CT the labels belong to; the label file must cover the same voxels (same
            canonical shape, spacing, origin and direction within a small tolerance), though it
            may store them in another voxel order.

    Returns:
        ``(Z, Y, X)`` uint8 labels, voxel-aligned with ``like.array``.
    """
    array, source = _read(Path(path), None)
    where = source.path
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise CTReadError(f"{where}: label map has NaN or infinite voxels")
        if not np.array_equal(array, np.round(array)):
            raise CTReadError(f"{where}: label map has non-integer values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise CTReadError(f"{where}: labels must lie in 0..255; found {array.min()}..{array.max()}")
    labels = np.ascontiguousarray(source.reorientation.to_canonical(array), dtype=np.uint8)
    if like is not None:
        _check_same_grid(where, source.reorientation.apply_to_grid(source.grid), like)
    return labels


def _read(path: Path, series_uid: str | None) -> tuple[np.ndarray, SourceInfo]:
    """File-order ``[k, j, i]`` voxels and where they came from."""
    if not path.exists():
        raise CTReadError(f"{path}: no such file or folder")
    if path.is_dir():
        from samliver.io.dicom import read_dicom_series

        array, grid, uid, decoder, instances = read_dicom_series(path, series_uid)
        return array, SourceInfo(path, "dicom", grid, plan_reorientation(grid.direction), None, uid, decoder,
                                 tuple(f for f, _ in instances), tuple(u for _, u in instances))
    if series_uid is not None:
        raise CTReadError(f"{path}: series_uid applies only to DICOM folders")
    if not is_nifti_path(path):
        raise CTReadError(
            f"{path}: unsupported file type; expected {' or '.join(NIFTI_SUFFIXES)} or a DICOM series folder"
        )
    array, grid, header = read_nifti(path)
    return array, SourceInfo(path, "nifti", grid, plan_reorientation(grid.direction), header, None, "nibabel")


def _check_same_grid(where: Path, grid: Grid, like: CTVolume) -> None:
    ref = like.grid
    min_spacing = min(ref.spacing_xyz)
    checks = [
        ("shape (x, y, z)", grid.shape_xyz, ref.shape_xyz, 0.0),
        ("spacing (x, y, z) mm", grid.spacing_xyz, ref.spacing_xyz, 1e-4 * min_spacing),
        # a hundredth of a voxel: NIfTI stores geometry as float32, DICOM as decimal strings
        ("origin (x, y, z) mm", grid.origin, ref.origin, 1e-2 * min_spacing),
        ("direction", grid.direction.ravel(), ref.direction.ravel(), 1e-4),
    ]
    for name, got, want, tol in checks:
        if np.shape(got) != np.shape(want) or not np.allclose(got, want, rtol=0, atol=tol):
            raise CTReadError(f"{where}: label grid differs from the CT's: {name} {_fmt(got)} vs {_fmt(want)}")


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


def _triple(values: Any, name: str) -> tuple[float, float, float]:
    out = tuple(float(v) for v in np.ravel(values))
    if len(out) != 3:
        raise ValueError(f"CTVolume.{name} needs 3 values; got {out}")
    return out  # type: ignore[return-value]
