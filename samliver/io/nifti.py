"""NIfTI reading and writing with nibabel (imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from samliver.errors import CTReadError
from samliver.io.orient import Grid

NIFTI_SUFFIXES = (".nii", ".nii.gz")

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path) -> tuple[np.ndarray, Grid, Any]:
    """Read a 3D NIfTI file.

    Returns:
        array: file voxel order as a numpy ``[k, j, i]`` array (SimpleITK's layout), with the
            header's scl_slope/scl_inter applied; the on-disk dtype where no scaling is needed.
        grid: the file's grid in LPS (from nibabel's best affine: sform, else qform).
        header: a copy of the nibabel header, used to write masks back on this grid.

    A 4D+ image whose extra dimensions are all 1 (``(X, Y, Z, 1)``) is read as 3D; anything else
    that is not 3D raises `CTReadError`.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # nibabel raises many types for "not a NIfTI file"
        raise CTReadError(f"{path}: not a readable NIfTI file ({_why(exc)})") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CTReadError(f"{path}: not a NIfTI image (nibabel read it as {type(image).__name__})")

    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3:
        raise CTReadError(f"{path}: {len(shape)}D image of shape {shape}; a 3D volume is required")
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise CTReadError(f"{path}: {len(shape)}D image of shape {shape}; a 3D volume is required")
    if min(shape[:3]) < 1:
        raise CTReadError(f"{path}: empty image of shape {shape}")

    try:
        data = np.asanyarray(image.dataobj)
    except MemoryError:
        raise
    except Exception as exc:  # truncated gzip, short file, bad dtype
        raise CTReadError(f"{path}: cannot read the voxel data ({_why(exc)})") from exc
    if data.dtype.kind not in "biuf":
        raise CTReadError(f"{path}: voxel type {data.dtype} is not a scalar number type")
    data = data.reshape(shape[:3])

    affine = np.asarray(image.affine, dtype=float)
    grid = _grid_from_affine(path, shape[:3], affine)
    return data.transpose(2, 1, 0), grid, image.header.copy()


def _grid_from_affine(path: Path, shape_ijk: tuple[int, ...], affine: np.ndarray) -> Grid:
    if not np.all(np.isfinite(affine)):
        raise CTReadError(f"{path}: the header's affine is not finite")
    linear = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise CTReadError(f"{path}: the header's affine is degenerate (a zero voxel size)")
    return Grid(
        shape_xyz=(shape_ijk[0], shape_ijk[1], shape_ijk[2]),
        spacing_xyz=tuple(float(s) for s in spacing),
        origin=tuple(float(v) for v in _RAS_TO_LPS @ affine[:3, 3]),
        direction=linear / spacing[None, :],
    )


def nifti_bytes(data_kji: np.ndarray, grid: Grid, header: Any | None, dtype: Any = np.uint8,
                intent: str = "label") -> bytes:
    """Serialise a volume (numpy ``[k, j, i]`` file order) as an uncompressed NIfTI-1 of ``dtype``.

    With ``header`` (the source NIfTI's), the affines, their codes and units are kept as they
    were; otherwise the grid's affine is written as both qform and sform (code 1, scanner).
    ``intent`` is the NIfTI intent (``"label"`` for label maps, ``"none"`` for images).
    """
    import nibabel as nib

    data = np.ascontiguousarray(data_kji.transpose(2, 1, 0), dtype=dtype)
    if header is not None:
        out_header = header.copy()
        out_header.set_data_shape(data.shape)
        out_header.set_data_dtype(dtype)
        out_header.set_slope_inter(None, None)
        out_header["cal_min"] = 0
        out_header["cal_max"] = 0
        out_header.set_intent(intent)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # affine=None keeps the header's qform/sform and their codes untouched
        image = image_class(data, None, header=out_header)
    else:
        affine = grid.ras_affine()
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        image.header.set_intent(intent)
    return image.to_bytes()


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text}"
