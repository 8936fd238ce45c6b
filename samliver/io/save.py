"""`save_mask`: write a canonical-orientation label map on the grid of the file a CT came from."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from samliver.atomic import write_bytes_atomic
from samliver.errors import MaskWriteError
from samliver.io.ct import CTVolume
from samliver.io.nifti import NIFTI_SUFFIXES, nifti_bytes
from samliver.io.orient import Reorientation


def save_mask(mask: np.ndarray, like: CTVolume, path: str | os.PathLike[str]) -> Path:
    """Write ``mask`` as a uint8 NIfTI label map on the grid of the file ``like`` was read from,
    or, for a ``.dcm`` path, as a DICOM SEG referencing ``like``'s DICOM series.

    Args:
        mask: ``(Z, Y, X)`` integer labels 0..255 (bool is fine), in ``like``'s canonical
            orientation, i.e. voxel-aligned with ``like.array``.
        like: the CT the mask belongs to. For a NIfTI source the output keeps the source's voxel
            order, affine, qform/sform and their codes; for a DICOM source it uses the series'
            grid as SimpleITK reads it; for a volume made in memory, its canonical grid.
        path: output file: ``.nii`` or ``.nii.gz`` (NIfTI), or ``.dcm`` (DICOM SEG: needs a CT
            read from a DICOM series, labels 1 liver / 2 tumour; see `samliver.io.dicom_seg`).

    Returns:
        The path written. The write is atomic: a temporary file in the same folder is fsynced
        and renamed over ``path``, so on any error nothing is left behind.

    Raises:
        MaskWriteError (a ValueError): wrong shape or values, unsupported suffix, unwritable path.
    """
    out = Path(path)
    name = out.name.lower()
    if not name.endswith((*NIFTI_SUFFIXES, ".dcm")):
        raise MaskWriteError(f"{out}: unsupported output type; use .nii, .nii.gz or .dcm (DICOM SEG)")
    labels = _as_uint8(mask, like, out)
    source = like.source
    if source is not None and out.resolve() == source.path.resolve():
        raise MaskWriteError(f"{out}: refusing to overwrite the image the mask was made for")
    if not out.parent.is_dir():
        raise MaskWriteError(f"{out}: folder {out.parent} does not exist")
    if name.endswith(".dcm"):
        from samliver.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(labels, like, out)

    grid, reorientation, header = _file_grid(like)
    payload = nifti_bytes(reorientation.from_canonical(labels), grid, header)
    write_atomic(out, payload, compress=name.endswith(".gz"))
    return out


def save_image(ct: CTVolume, path: str | os.PathLike[str]) -> Path:
    """Write ``ct.array`` (HU, rounded and clipped to int16) as NIfTI on the grid of the file
    ``ct`` was read from (its canonical grid for a volume made in memory); atomic like `save_mask`.

    Raises:
        MaskWriteError: unsupported suffix, unwritable path, or ``path`` is the source file itself.
    """
    out = Path(path)
    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        raise MaskWriteError(f"{out}: unsupported output type; use .nii or .nii.gz")
    if ct.source is not None and out.resolve() == ct.source.path.resolve():
        raise MaskWriteError(f"{out}: refusing to overwrite the source image")
    if not out.parent.is_dir():
        raise MaskWriteError(f"{out}: folder {out.parent} does not exist")
    hu = np.clip(np.rint(ct.array), -32768, 32767).astype(np.int16)
    grid, reorientation, header = _file_grid(ct)
    payload = nifti_bytes(reorientation.from_canonical(hu), grid, header, dtype=np.int16, intent="none")
    write_atomic(out, payload, compress=out.name.lower().endswith(".gz"))
    return out


def _file_grid(ct: CTVolume) -> tuple:
    """``(grid, reorientation, nifti header or None)`` of the file ``ct`` was read from."""
    source = ct.source
    if source is not None:
        return source.grid, source.reorientation, source.nifti_header
    # made in memory: the canonical grid is the file grid
    return ct.grid, Reorientation((0, 1, 2), (False, False, False)), None


def _as_uint8(mask: np.ndarray, like: CTVolume, out: Path) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != like.array.shape:
        raise MaskWriteError(f"{out}: mask shape {array.shape} does not match the CT's shape {like.array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind not in "iuf":
        raise MaskWriteError(f"{out}: mask must hold integer labels; got dtype {array.dtype}")
    if array.size == 0:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and not (np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
        raise MaskWriteError(f"{out}: mask has non-integer values; labels must be integers 0..255")
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise MaskWriteError(f"{out}: mask labels must lie in 0..255 (uint8); found {low}..{high}")
    return array.astype(np.uint8)


def write_atomic(out: Path, payload: bytes, compress: bool) -> None:
    """Write ``payload`` (gzipped if ``compress``) to ``out`` atomically (`write_bytes_atomic`);
    on any error no file is left. Raises MaskWriteError naming ``out``."""
    if compress:
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    try:
        write_bytes_atomic(out, payload)
    except OSError as exc:
        raise MaskWriteError(f"{out}: write failed ({exc.strerror or exc})") from exc
