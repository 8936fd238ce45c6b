"""RECIST marks as prompts: a lesion's long- and short-axis lines on one slice → box + points.

Radiologists draw RECIST marks in routine reads: the **long axis** (the lesion's longest
in-plane diameter) and the **short axis** (its longest diameter perpendicular to the long
axis). MedSAM2 and DeepRecS prompt with these marks; `from_recist` turns them into one
`Prompts` object (a box enclosing both lines and a positive click where they cross), and
`recist_from_mask` derives the marks from a reference lesion, as an evaluation protocol.

Coordinates are the slice's pixels, ``(x, y) = (column, row)``, as for points; boxes follow
`boxes_from_mask`'s pixel-edge convention (a mark ending in column ``c`` makes ``x1 = c + 1``).
Lengths are mm, from the slice's ``spacing = (row_mm, col_mm)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist, squareform

from samliver.errors import PromptError

from .types import Prompts

#: The short axis's midpoint must project onto the long axis within this many pixels of its ends.
_ON_AXIS_TOL_PX = 1.0


@dataclass(frozen=True)
class RecistMarks:
    """RECIST marks of one lesion on one slice.

    Attributes:
        long_axis: ``(2, 2)`` float ``((x0, y0), (x1, y1))`` pixel centres of the longest diameter.
        short_axis: ``(2, 2)`` the longest diameter perpendicular to it (both ends equal for a
            lesion one pixel wide).
        long_mm: length of the long axis in mm.
        short_mm: length of the short axis in mm.
    """

    long_axis: np.ndarray
    short_axis: np.ndarray
    long_mm: float
    short_mm: float


def _slice_spacing(spacing: Sequence[float] | None, what: str) -> tuple[float, float]:
    """``(row_mm, col_mm)`` from a 2-sequence, or the last two of a ``(z, y, x)`` triple."""
    if spacing is None:
        return 1.0, 1.0
    values = np.asarray(spacing, dtype=np.float64).ravel()
    if values.size not in (2, 3) or not np.isfinite(values).all() or (values <= 0).any():
        raise PromptError(f"{what}: spacing must be (row_mm, col_mm) (or (z, y, x)) positive finite mm, "
                          f"got {spacing!r}")
    return float(values[-2]), float(values[-1])


def _segment(name: str, value) -> np.ndarray:
    try:
        seg = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PromptError(f"{name}: expected ((x0, y0), (x1, y1)) in pixels, got {value!r}") from None
    if seg.shape != (2, 2):
        raise PromptError(f"{name}: expected ((x0, y0), (x1, y1)) in pixels, got {value!r}")
    if not np.isfinite(seg).all():
        raise PromptError(f"{name}: contains NaN or infinite values: {seg.tolist()}")
    return seg


def _crossing(long_axis: np.ndarray, short_axis: np.ndarray) -> np.ndarray:
    """``(x, y)`` where the two lines cross, if it lies on both segments (within half a pixel);
    else the short axis's midpoint (parallel lines, a one-pixel short axis, a non-convex lesion)."""
    p, r = long_axis[0], long_axis[1] - long_axis[0]
    q, s = short_axis[0], short_axis[1] - short_axis[0]
    mid = short_axis.mean(axis=0)
    denom = r[0] * s[1] - r[1] * s[0]
    if abs(denom) < 1e-9:
        return mid
    t = ((q - p)[0] * s[1] - (q - p)[1] * s[0]) / denom
    u = ((q - p)[0] * r[1] - (q - p)[1] * r[0]) / denom
    tol_t, tol_u = 0.5 / np.linalg.norm(r), 0.5 / np.linalg.norm(s)
    if -tol_t <= t <= 1 + tol_t and -tol_u <= u <= 1 + tol_u:
        return p + t * r
    return mid


def _ellipse_extent(long_axis: np.ndarray, short_axis: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(x, y)`` and half-extents ``(x, y)`` in pixels of the ellipse whose major axis is
    the long axis and whose minor axis has the short axis's length; ``scale`` is ``(col_mm, row_mm)``."""
    p0, p1 = long_axis[0] * scale, long_axis[1] * scale
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    n = np.array([-d[1], d[0]])
    a = np.linalg.norm(p1 - p0) / 2
    b = np.linalg.norm((short_axis[1] - short_axis[0]) * scale) / 2
    centre = (p0 + p1) / 2 + ((short_axis.mean(axis=0) * scale - (p0 + p1) / 2) @ n) * n
    half = np.sqrt((a * d) ** 2 + (b * n) ** 2)
    return centre / scale, half / scale


def from_recist(long_axis, short_axis, *, margin_px: float = 0.0, margin_mm: float | None = None,
                spacing: Sequence[float] | None = None, endpoints: bool = False, ellipse: bool = True,
                label: int = 2, max_skew_deg: float = 45.0) -> Prompts:
    """One lesion's RECIST marks → `Prompts` for one object.

    Args:
        long_axis: ``((x0, y0), (x1, y1))`` in slice pixels: the longest diameter.
        short_axis: ``((x0, y0), (x1, y1))``: the longest diameter perpendicular to it (may have
            zero length for a lesion one pixel wide; both marks have zero length for a one-pixel lesion).
        margin_px: pixels added on every side of the box enclosing both lines.
        margin_mm: the same in mm (needs ``spacing``); replaces ``margin_px``.
        spacing: ``(row_mm, col_mm)`` of the slice (a ``(z, y, x)`` triple also works); lengths
            and angles are checked in mm when given, in pixels otherwise.
        endpoints: also click the four line ends (positive), after the centre click.
        ellipse: the box also encloses the ellipse with these diameters (long axis as its major
            axis; centred on the long axis's midpoint, moved across to the short axis's), which an
            oblique lesion fills beyond the lines' own extent.
        label: class the object is written with (default 2, tumour).
        max_skew_deg: largest accepted deviation of the short axis from perpendicular.

    Returns:
        `Prompts` with ``boxes (1, 4)`` (pixel-edge, enclosing both lines and, with ``ellipse``,
        their ellipse; grown by the margin),
        ``points (1, K, 2)`` (K = 1, or 5 with ``endpoints``): first where the lines cross (the
        short axis's midpoint if they do not), all positive; ``labels`` ``[label]``.

    Raises:
        PromptError: a mark is not two finite points; the short axis is longer than the long one,
            far from perpendicular, or beside the long axis (the marks must describe one lesion);
            a negative margin; ``margin_mm`` without spacing.
    """
    long_axis, short_axis = _segment("long_axis", long_axis), _segment("short_axis", short_axis)
    sy, sx = _slice_spacing(spacing, "from_recist")
    if margin_mm is not None and spacing is None:
        raise PromptError("from_recist: margin_mm needs spacing=(row_mm, col_mm) of the slice")
    margin = (float(margin_mm) / sy, float(margin_mm) / sx) if margin_mm is not None else (margin_px, margin_px)
    if not (np.isfinite(margin).all() and min(margin) >= 0):
        raise PromptError(f"from_recist: margin must be a finite number >= 0, got "
                          f"{margin_mm if margin_mm is not None else margin_px!r}")
    scale = np.array([sx, sy])
    long_vec, short_vec = (long_axis[1] - long_axis[0]) * scale, (short_axis[1] - short_axis[0]) * scale
    long_len, short_len = float(np.linalg.norm(long_vec)), float(np.linalg.norm(short_vec))
    unit = "mm" if spacing is not None else "px"
    if short_len > long_len * (1 + 1e-6):
        raise PromptError(f"short_axis: {short_len:.1f} {unit} is longer than long_axis ({long_len:.1f} {unit}); "
                          f"are the two marks swapped?")
    if short_len > 0:
        skew = 90.0 - np.degrees(np.arccos(min(1.0, abs(float(long_vec @ short_vec)) / (long_len * short_len))))
        if skew > max_skew_deg:
            raise PromptError(f"short_axis: {skew:.0f} degrees off perpendicular to long_axis (at most "
                              f"{max_skew_deg:g} accepted): {short_axis.tolist()}")
    # All of a lesion projects onto its longest diameter, so the short axis must too.
    offset = short_axis.mean(axis=0) - long_axis[0]
    span = float(np.sum((long_axis[1] - long_axis[0]) ** 2))
    if span == 0:  # a one-pixel lesion: both marks are that pixel
        beside = float(np.linalg.norm(offset)) > _ON_AXIS_TOL_PX
    else:
        along, tol = float(offset @ (long_axis[1] - long_axis[0])), _ON_AXIS_TOL_PX * np.sqrt(span)
        beside = not -tol <= along <= span + tol
    if beside:
        raise PromptError(f"short_axis: {short_axis.tolist()} lies beside long_axis {long_axis.tolist()}; "
                          f"the marks must describe one lesion")
    both = np.concatenate([long_axis, short_axis])
    lo, hi = both.min(axis=0), both.max(axis=0)
    if ellipse and long_len > 0:
        centre, half = _ellipse_extent(long_axis, short_axis, scale)
        lo, hi = np.minimum(lo, centre - half), np.maximum(hi, centre + half)
    hi = hi + 1.0
    box = np.array([lo[0] - margin[1], lo[1] - margin[0], hi[0] + margin[1], hi[1] + margin[0]], np.float32)
    points = [_crossing(long_axis, short_axis)]
    if endpoints:
        points += list(both)
    return Prompts(boxes=box[None], points=np.array(points, np.float32)[None],
                   point_labels=np.ones((1, len(points)), np.int64), labels=np.array([label], np.uint8))


def _pixels_mm(mask_2d: np.ndarray, sy: float, sx: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices ``(N, 2)`` as ``(x, y)`` and their centres in mm ``(N, 2)``."""
    rows, cols = np.nonzero(mask_2d)
    xy = np.stack([cols, rows], axis=1)
    return xy, xy * np.array([sx, sy])


def _long_axis(mask_2d: np.ndarray, sy: float, sx: float) -> tuple[np.ndarray, float]:
    """Pixel centres ``(2, 2)`` ``(x, y)`` of the longest in-plane diameter and its length in mm.

    The same measurement as `samliver.evaluation.lesion_sizes.longest_axial_diameter` (which gives
    only the length): the extreme pixels of each row hold every convex-hull vertex; the pair
    furthest apart among the hull's vertices is the diameter.
    """
    rows = np.flatnonzero(mask_2d.any(axis=1))
    sub = mask_2d[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    xy = np.unique(np.stack([np.concatenate([first, last]), np.concatenate([rows, rows])], axis=1), axis=0)
    mm = xy * np.array([sx, sy])
    if len(xy) >= 3:
        try:
            keep = ConvexHull(mm).vertices
            xy, mm = xy[keep], mm[keep]
        except QhullError:  # collinear pixels: few enough to compare all pairs
            pass
    if len(xy) == 1:
        return np.stack([xy[0], xy[0]]).astype(np.float64), 0.0
    dist = squareform(pdist(mm))
    i, j = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.stack([xy[i], xy[j]]).astype(np.float64), float(dist[i, j])


def recist_from_mask(mask_2d: np.ndarray, spacing: Sequence[float] | None = None) -> RecistMarks:
    """RECIST marks of the lesion in ``mask_2d`` ``(H, W)`` (all its pixels count as one lesion).

    The long axis is the longest distance between two pixel centres (mm, from ``spacing``
    ``(row_mm, col_mm)``; 1 mm pixels when None). The short axis is the longest chord
    perpendicular to it: pixels are grouped by their position along the long axis in bins of
    half the smaller pixel size, and the bin whose pixels spread furthest across the long axis
    gives it, so it deviates from perpendicular by less than 30 degrees (exactly perpendicular
    when the long axis runs along a row, a column or a pixel diagonal).

    Raises:
        PromptError: the mask is not 2D or is empty, or the spacing is not positive.
    """
    mask = np.asarray(mask_2d)
    if mask.ndim != 2:
        raise PromptError(f"recist_from_mask: expected one (H, W) slice, got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise PromptError("recist_from_mask: the mask is empty; there is no lesion to measure")
    sy, sx = _slice_spacing(spacing, "recist_from_mask")
    long_axis, long_mm = _long_axis(mask, sy, sx)
    xy, mm = _pixels_mm(mask, sy, sx)
    if long_mm == 0:
        return RecistMarks(long_axis, long_axis.copy(), 0.0, 0.0)
    direction = (long_axis[1] - long_axis[0]) * np.array([sx, sy]) / long_mm
    normal = np.array([-direction[1], direction[0]])
    bins = np.round((mm @ direction) / (min(sx, sy) / 2)).astype(np.int64)
    across = mm @ normal
    order = np.lexsort((across, bins))  # by bin, then across the axis
    bins_sorted = bins[order]
    starts = np.flatnonzero(np.r_[True, bins_sorted[1:] != bins_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)] - 1
    # Pairs (lowest, highest across the axis) per bin; their true distance picks the widest.
    lo, hi = order[starts], order[ends]
    widths = np.linalg.norm(mm[hi] - mm[lo], axis=1)
    k = int(np.argmax(widths))
    short_axis = np.stack([xy[lo[k]], xy[hi[k]]]).astype(np.float64)
    return RecistMarks(long_axis, short_axis, long_mm, float(widths[k]))


def recist_prompts(mask_2d: np.ndarray, spacing: Sequence[float] | None = None, **options) -> Prompts | None:
    """`from_recist` prompts for every connected object (8-connectivity) of ``mask_2d`` ``(H, W)``
    (binary or a label map: each object keeps its class as its label), with marks from
    `recist_from_mask`; ``options`` go to `from_recist`. None when the mask is empty."""
    from .from_mask import _objects

    objects = _objects(mask_2d)
    if not objects:
        return None
    parts = [from_recist(m.long_axis, m.short_axis, spacing=spacing, label=cls, **options)
             for m, cls in ((recist_from_mask(obj, spacing), cls) for obj, cls in objects)]
    return Prompts(boxes=np.concatenate([p.boxes for p in parts]), points=np.concatenate([p.points for p in parts]),
                   point_labels=np.concatenate([p.point_labels for p in parts]),
                   labels=np.concatenate([p.labels for p in parts]))
