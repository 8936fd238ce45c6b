"""Prompts simulated from a ground-truth mask (training and evaluation).

Boxes use pixel-edge coordinates: an object covering columns ``c0..c1`` (inclusive) gets
``x0 = c0, x1 = c1 + 1``, so even a one-pixel lesion has ``x0 < x1``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .types import Prompts

# 8-connectivity in 2D: diagonal neighbours belong to the same object.
_STRUCTURE_2D = np.ones((3, 3), bool)


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)


def _objects(mask_2d: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Connected objects of a binary mask or label map: ``[(bool mask (H,W), class label)]``.

    Objects are ordered by class, then by their first pixel in raster order.
    """
    mask_2d = np.asarray(mask_2d)
    if mask_2d.ndim != 2:
        raise ValueError(f"mask: expected a 2D slice, got shape {mask_2d.shape}")
    out = []
    for cls in np.unique(mask_2d[mask_2d > 0]):
        components, n = ndimage.label(mask_2d == cls, structure=_STRUCTURE_2D)
        for k in range(1, n + 1):
            out.append((components == k, int(cls) if mask_2d.dtype != bool else 1))
    return out


def boxes_from_mask(mask_2d: np.ndarray, jitter_px: float = 0, jitter_mm: float | None = None,
                    spacing: Sequence[float] | None = None,
                    rng: np.random.Generator | int | None = None) -> Prompts | None:
    """One box per connected object of ``mask_2d`` ``(H, W)`` (binary or a label map).

    Args:
        jitter_px: each box side moves independently by a uniform offset in ``[-j, j]`` pixels.
        jitter_mm: the same in millimetres; needs ``spacing = (row_mm, col_mm)`` of the slice.
        rng: a ``numpy.random.Generator`` or a seed (None means seed 0), so results are repeatable.

    Returns:
        ``Prompts`` with ``boxes (N, 4)`` and ``labels`` (the mask's class values), or None
        when the mask is empty.
    """
    if jitter_mm is not None:
        if spacing is None or len(spacing) != 2:
            raise ValueError("jitter_mm needs spacing=(row_mm, col_mm) of the slice")
        jit_y, jit_x = jitter_mm / float(spacing[0]), jitter_mm / float(spacing[1])
    else:
        jit_y = jit_x = float(jitter_px)
    objects = _objects(mask_2d)
    if not objects:
        return None
    h, w = np.asarray(mask_2d).shape
    gen = _generator(rng)
    boxes = []
    for obj, _ in objects:
        rows, cols = np.nonzero(obj)
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
        if jit_x or jit_y:
            box += gen.uniform(-1, 1, 4).astype(np.float32) * np.array([jit_x, jit_y, jit_x, jit_y], np.float32)
            box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
            # Jitter must not invert or collapse a box: keep at least one pixel.
            box[2] = max(box[2], min(box[0] + 1, w))
            box[0] = min(box[0], box[2] - 1)
            box[3] = max(box[3], min(box[1] + 1, h))
            box[1] = min(box[1], box[3] - 1)
        boxes.append(box)
    return Prompts(boxes=np.stack(boxes), labels=np.array([c for _, c in objects], np.uint8))


def points_from_mask(mask_2d: np.ndarray, n_pos: int = 1, n_neg: int = 0,
                     rng: np.random.Generator | int | None = None) -> Prompts | None:
    """``n_pos`` foreground and ``n_neg`` background clicks per connected object of ``mask_2d`` ``(H, W)``.

    The first positive click is the object's most interior pixel (largest distance to its
    border; nearest the centroid among ties), as an annotator would click; further positives are uniform inside the object.
    Negatives are uniform over background pixels within the object's box grown by half its
    size (nearby background), or anywhere outside the object when that region has none.

    Returns:
        ``Prompts`` with ``points (N, n_pos + n_neg, 2)`` as ``(x, y)`` pixel coordinates,
        ``point_labels`` (positives first) and ``labels``; None when the mask is empty.
    """
    if n_pos < 0 or n_neg < 0 or n_pos + n_neg == 0:
        raise ValueError(f"points_from_mask: need n_pos >= 0, n_neg >= 0 and at least one point, "
                         f"got n_pos={n_pos}, n_neg={n_neg}")
    objects = _objects(mask_2d)
    if not objects:
        return None
    gen = _generator(rng)
    h, w = np.asarray(mask_2d).shape
    all_points = []
    for obj, _ in objects:
        rows, cols = np.nonzero(obj)
        pts: list[tuple[float, float]] = []
        if n_pos:
            depth = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
            deep_r, deep_c = np.nonzero(depth == depth.max())
            # Among the most interior pixels, the one nearest the centroid (ties: raster order).
            k = int(np.argmin((deep_r - rows.mean()) ** 2 + (deep_c - cols.mean()) ** 2))
            pts.append((float(deep_c[k]), float(deep_r[k])))
            extra = gen.integers(0, rows.size, n_pos - 1)
            pts += [(float(cols[i]), float(rows[i])) for i in extra]
        if n_neg:
            gy, gx = (rows.max() - rows.min() + 1) // 2 + 1, (cols.max() - cols.min() + 1) // 2 + 1
            near = np.zeros_like(obj)
            near[max(rows.min() - gy, 0):rows.max() + gy + 1, max(cols.min() - gx, 0):cols.max() + gx + 1] = True
            near &= ~obj
            if not near.any():
                near = ~obj
            if not near.any():
                raise ValueError(f"points_from_mask: the object fills the whole {w}x{h} slice; "
                                 f"no background for negative clicks")
            nr, nc = np.nonzero(near)
            pick = gen.integers(0, nr.size, n_neg)
            pts += [(float(nc[i]), float(nr[i])) for i in pick]
        all_points.append(pts)
    n = len(objects)
    labels = np.array([1] * n_pos + [0] * n_neg, np.int64)
    return Prompts(points=np.array(all_points, np.float32), point_labels=np.tile(labels, (n, 1)),
                   labels=np.array([c for _, c in objects], np.uint8))
