"""Lesions and their sizes for liver-tumour CT segmentations: 3D components, RECIST longest axial
diameters, volumes and size bins. Detection (matching predicted to reference lesions) is in
:mod:`samliver.evaluation.lesions`.

Arrays are ``(Z, Y, X)`` in samliver's canonical orientation (axis 0 is the axial
slice index); ``spacing`` is ``(z, y, x)`` in mm. Tumour masks are binary (select a label
first, e.g. ``label == 2``).

Lesions
-------
A lesion is a **3D connected component** of a tumour mask with **26-connectivity**
(voxels touching by a face, edge or corner belong together; LiTS also split lesions in
3D). ``connectivity=6`` (faces only) is available everywhere.

Lesion size is the reference lesion's **longest axial diameter** (RECIST): the longest
in-plane distance, in mm, between the centres of two voxels of the lesion lying on the
same axial slice, maximised over slices (:func:`longest_axial_diameter`). Because it is
measured between voxel centres, a one-voxel lesion has diameter 0 mm and a lesion ``n``
voxels long along x has diameter ``(n - 1) * spacing_x``. Size bins (:data:`SIZE_BINS`):
``"<10mm"`` (d < 10 mm), ``"10-20mm"`` (10 <= d <= 20 mm), ``">20mm"`` (d > 20 mm).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from .metrics import SpacingLike, as_binary, validate_spacing

__all__ = ["SIZE_BINS", "label_lesions", "lesion_diameters", "longest_axial_diameter", "size_bin", "volume_ml"]

#: ``(name, low_mm, high_mm)``: d < 10 mm, 10 <= d <= 20 mm, d > 20 mm.
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<10mm", 0.0, 10.0),
    ("10-20mm", 10.0, 20.0),
    (">20mm", 20.0, math.inf),
)


def size_bin(diameter_mm: float) -> str:
    """Name of the size bin of a lesion with longest axial diameter ``diameter_mm`` (mm)."""
    if diameter_mm < 10.0:
        return "<10mm"
    if diameter_mm <= 20.0:
        return "10-20mm"
    return ">20mm"


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 26:
        return ndimage.generate_binary_structure(3, 3)
    if connectivity == 6:
        return ndimage.generate_binary_structure(3, 1)
    raise ValueError(f"connectivity must be 6 or 26, got {connectivity!r}")


def label_lesions(mask: Any, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the 3D connected components of a binary ``(Z, Y, X)`` mask.

    Returns ``(labels, n)``: ``labels`` int32 ``(Z, Y, X)``, 0 background, lesions 1..n.
    """
    m = as_binary(mask, "mask")
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D (Z, Y, X), got shape {m.shape}")
    labels, n = ndimage.label(m, structure=_structure(connectivity))
    return labels.astype(np.int32, copy=False), int(n)


def volume_ml(mask: Any, spacing: SpacingLike) -> float:
    """Volume of a binary mask in mL (voxel count × voxel volume in mm³ / 1000)."""
    sp = validate_spacing(spacing)
    m = as_binary(mask, "mask")
    return int(np.count_nonzero(m)) * sp[0] * sp[1] * sp[2] / 1000.0


def _max_distance(points: np.ndarray) -> float:
    """Largest distance between any two of ``points`` ``(N, 2)`` (mm)."""
    if len(points) < 2:
        return 0.0
    candidates = points
    if len(points) >= 3:
        try:
            candidates = points[ConvexHull(points).vertices]
        except QhullError:  # all points on one line: keep them all (few per slice)
            candidates = points
    return float(pdist(candidates).max())


def _slice_diameter(m2: np.ndarray, sy: float, sx: float) -> float:
    """Longest distance (mm) between two pixel centres of a 2D mask ``(Y, X)``."""
    rows = np.flatnonzero(m2.any(axis=1))
    if rows.size == 0:
        return 0.0
    sub = m2[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    # The leftmost and rightmost pixel of each row include every convex-hull vertex.
    ys = np.concatenate([rows, rows]).astype(np.float64) * sy
    xs = np.concatenate([first, last]).astype(np.float64) * sx
    pts = np.unique(np.stack([ys, xs], axis=1), axis=0)
    return _max_distance(pts)


def longest_axial_diameter(mask: Any, spacing: SpacingLike) -> float:
    """RECIST longest axial diameter of a binary ``(Z, Y, X)`` mask, in mm.

    The longest distance between the centres of two voxels on the same axial slice
    (same index along axis 0), using the in-plane spacing ``(y, x)``; maximised over
    slices. Computed per slice on the convex hull of the row extremes (scipy's
    ``ConvexHull``), falling back to all pairs for tiny or collinear masks. 0 for an
    empty mask or a single voxel.
    """
    sp = validate_spacing(spacing)
    m = as_binary(mask, "mask")
    if m.ndim != 3:
        raise ValueError(f"mask must be 3D (Z, Y, X), got shape {m.shape}")
    best = 0.0
    for z in np.flatnonzero(m.any(axis=(1, 2))):
        best = max(best, _slice_diameter(m[z], sp[1], sp[2]))
    return best


def component_diameters(labels: np.ndarray, n: int, spacing: tuple[float, float, float]) -> list[float]:
    """Longest axial diameter (mm) of each component ``1..n`` of a label map ``labels`` ``(Z, Y, X)``."""
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        out.append(0.0 if sl is None else longest_axial_diameter(labels[sl] == i, spacing))
    return out


def lesion_diameters(mask: Any, spacing: SpacingLike, connectivity: int = 26) -> list[float]:
    """Longest axial diameter (mm) of each lesion of a binary tumour mask, in label order."""
    sp = validate_spacing(spacing)
    labels, n = label_lesions(mask, connectivity)
    return component_diameters(labels, n, sp)
