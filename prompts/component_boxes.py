"""Boxes from coarse class masks or probability maps: one box per connected component per slice.

The rule (used by `samliver.prompts.unet_boxes.UNetBoxGenerator`, and usable on any model's
probabilities):

1. threshold each class's probability (``p >= threshold``); the liver class is the whole organ, so its
   probability is ``p(liver) + p(tumour)`` (LiTS nesting: a tumour lies inside the liver and the liver
   object covers it, as `samliver.data.objects_from_label` makes the training objects); optionally with
   hysteresis: pixels with ``p >= low_threshold`` join where their per-slice 8-connected region holds a
   pixel above ``threshold`` (a coarse network's faint lesion rims then count towards the area and box);
2. optional 3D persistence: a voxel is kept only if its 3D connected component (26-connected) spans at
   least ``min_slices`` slices, which removes single-slice specks;
3. per slice, 8-connected components; components smaller than ``min_area_mm2`` (pixel count x row
   spacing x column spacing) are dropped;
4. one box per component, in pixel-edge coordinates (columns ``c0..c1`` give ``x0 = c0, x1 = c1 + 1``,
   as `samliver.prompts.boxes_from_mask`), grown by ``margin_mm`` on every side (``margin_mm / spacing``
   pixels along each axis, so anisotropic pixels get different pixel margins) and clipped to the slice.

Hand-written: MONAI's ``KeepLargestConnectedComponent`` / ``RemoveSmallObjects`` work in voxels, not
mm, and neither gives boxes; skimage's ``apply_hysteresis_threshold`` uses strict ``>`` and face
connectivity over the whole array, not the ``>=`` and per-slice 8-connectivity of this rule.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from samliver.errors import PromptError

from .types import Prompts

LIVER, TUMOR = 1, 2
#: default smallest per-slice component, mm²: about a 10 mm disc (pi x 5² = 78.5 mm²), RECIST 1.1's smallest
#: measurable lesion on CT; smaller cross-sections (lesion tips, 5 mm nodules) are not prompted
MIN_AREA_MM2 = 80.0
_EIGHT = np.ones((3, 3), bool)
_TWENTY_SIX = np.ones((3, 3, 3), bool)


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """``(z, y, x)`` mm as floats; raises `PromptError` unless three finite positive numbers."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise PromptError(f"spacing: expected (z, y, x) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise PromptError(f"spacing: expected three positive (z, y, x) values in mm, got {spacing!r}")
    return values  # type: ignore[return-value]


def class_masks(probabilities: np.ndarray, threshold: float = 0.5,
                low_threshold: float | None = None) -> dict[int, np.ndarray]:
    """``{1: liver (Z, Y, X) bool, 2: tumour (Z, Y, X) bool}`` from softmax probabilities ``(Z, 3, Y, X)``
    (channels background, liver, tumour): liver where ``p1 + p2 >= threshold``, tumour where ``p2 >= threshold``;
    with ``low_threshold`` (<= threshold), grown by `hysteresis` to the pixels at or above it."""
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or probs.shape[1] != 3:
        raise PromptError(f"probabilities: expected (Z, 3, Y, X) for background, liver, tumour; got {probs.shape}")
    if not 0.0 < float(threshold) < 1.0:
        raise PromptError(f"threshold: must lie strictly between 0 and 1, got {threshold}")
    if low_threshold is not None and not 0.0 < float(low_threshold) <= float(threshold):
        raise PromptError(f"low_threshold: must lie in (0, threshold {threshold}], got {low_threshold}")
    per_class = {LIVER: probs[:, 1] + probs[:, 2], TUMOR: probs[:, 2]}
    if low_threshold is None:
        return {label: p >= threshold for label, p in per_class.items()}
    return {label: hysteresis(p >= threshold, p >= low_threshold) for label, p in per_class.items()}


def hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """``weak`` ``(Z, Y, X)`` bool kept only in its per-slice 8-connected regions that hold a ``strong`` pixel
    (``strong`` lies within ``weak``)."""
    out = np.zeros_like(weak)
    for z in np.flatnonzero(strong.any(axis=(1, 2))):
        regions, n = ndimage.label(weak[z], structure=_EIGHT)
        keep = np.zeros(n + 1, bool)
        keep[regions[strong[z]]] = True
        keep[0] = False
        out[z] = keep[regions]
    return out


def persistent(mask: np.ndarray, min_slices: int) -> np.ndarray:
    """``mask`` ``(Z, Y, X)`` without the 3D components (26-connected) that span fewer than ``min_slices`` slices."""
    if min_slices <= 1 or not mask.any():
        return mask
    components, n = ndimage.label(mask, structure=_TWENTY_SIX)
    spans = ndimage.find_objects(components)
    keep = np.zeros(n + 1, bool)
    for k, span in enumerate(spans, start=1):
        keep[k] = span is not None and span[0].stop - span[0].start >= min_slices
    return keep[components]


def slice_boxes(mask_2d: np.ndarray, spacing_yx: tuple[float, float], margin_mm: float,
                min_area_mm2: float) -> np.ndarray:
    """Boxes ``(N, 4)`` float32 xyxy pixels of the 8-connected components of one slice's mask ``(H, W)``
    with an area of at least ``min_area_mm2``, grown by ``margin_mm`` and clipped; components in raster
    order of their first pixel."""
    h, w = mask_2d.shape
    components, n = ndimage.label(mask_2d, structure=_EIGHT)
    if n == 0:
        return np.zeros((0, 4), np.float32)
    pixel_mm2 = spacing_yx[0] * spacing_yx[1]
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:] * pixel_mm2
    my, mx = margin_mm / spacing_yx[0], margin_mm / spacing_yx[1]
    boxes = []
    for k, span in enumerate(ndimage.find_objects(components)):
        if span is None or areas[k] < min_area_mm2:
            continue
        rows, cols = span
        boxes.append([max(cols.start - mx, 0.0), max(rows.start - my, 0.0),
                      min(cols.stop + mx, float(w)), min(rows.stop + my, float(h))])
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def boxes_from_masks(masks: Mapping[int, np.ndarray], spacing: Sequence[float], margin_mm: float = 3.0,
                     min_area_mm2: float = MIN_AREA_MM2, min_slices: int = 1) -> dict[int, Prompts]:
    """One box per component per slice of class masks (see the module docstring, steps 2-4).

    Args:
        masks: class label (1 liver, 2 tumour, ...) -> ``(Z, Y, X)`` bool mask; all the same shape.
        spacing: ``(z, y, x)`` mm of the volume.
        margin_mm: grow each box by this much on every side (pixels: ``margin_mm / spacing``).
        min_area_mm2: drop per-slice components smaller than this.
        min_slices: keep only 3D components spanning at least this many slices (1: no check).

    Returns:
        ``{slice index: Prompts(boxes (N, 4), labels (N,))}``, objects ordered by label, then raster
        order; slices without a box have no entry.
    """
    _, sy, sx = check_spacing(spacing)
    if not margin_mm >= 0 or not min_area_mm2 >= 0:
        raise PromptError(f"margin_mm and min_area_mm2 must be 0 or more, got {margin_mm} and {min_area_mm2}")
    if int(min_slices) < 1:
        raise PromptError(f"min_slices must be at least 1, got {min_slices}")
    shapes = {np.shape(m) for m in masks.values()}
    if len(shapes) > 1 or any(len(s) != 3 for s in shapes):
        raise PromptError(f"masks: expected (Z, Y, X) masks of one shape, got {sorted(shapes)}")
    kept = {int(label): persistent(np.asarray(m, bool), int(min_slices)) for label, m in sorted(masks.items())}
    out: dict[int, Prompts] = {}
    for z in sorted({int(z) for m in kept.values() for z in np.flatnonzero(m.any(axis=(1, 2)))}):
        boxes, labels = [], []
        for label, mask in kept.items():
            found = slice_boxes(mask[z], (sy, sx), margin_mm, min_area_mm2)
            boxes.append(found)
            labels += [label] * len(found)
        if labels:
            out[z] = Prompts(boxes=np.concatenate(boxes), labels=np.asarray(labels, np.uint8))
    return out


def boxes_from_probabilities(probabilities: np.ndarray, spacing: Sequence[float], threshold: float = 0.5,
                             margin_mm: float = 3.0, min_area_mm2: float = MIN_AREA_MM2,
                             min_slices: int = 1, low_threshold: float | None = None) -> dict[int, Prompts]:
    """Boxes from softmax probabilities ``(Z, 3, Y, X)`` (background, liver, tumour) of a volume with
    ``spacing`` ``(z, y, x)`` mm: `class_masks` then `boxes_from_masks`."""
    return boxes_from_masks(class_masks(probabilities, threshold, low_threshold), spacing, margin_mm, min_area_mm2,
                            min_slices)


def box_recall(prompts: Mapping[int, Prompts], label: np.ndarray, spacing: Sequence[float],
               min_area_mm2: float = MIN_AREA_MM2, coverage: float = 0.9, margin_mm: float = 3.0,
               min_iou: float = 0.5) -> dict[str, dict[str, float | int | None]]:
    """How many true objects the boxes find: per class, the fraction of ground-truth objects (per-slice
    8-connected components of the liver, labels 1 and 2, and of the tumour, label 2) of at least
    ``min_area_mm2`` that a box of the same class covers.

    A box covers an object when it contains at least ``coverage`` of the object's pixels and its IoU
    with the object's tight box grown by ``margin_mm`` (what a perfect generator would return) is at
    least ``min_iou`` (so an oversized box does not count). Also reports precision: the fraction of
    boxes that cover an object of their class (any size).

    Returns:
        ``{"liver": {"objects", "found", "recall", "boxes", "true_boxes", "precision"}, "tumor": {...}}``
        (``true_boxes``: boxes that cover an object); recall / precision are None where there is nothing to count.
    """
    _, sy, sx = check_spacing(spacing)
    label = np.asarray(label)
    result = {}
    for name, cls, truth in (("liver", LIVER, label >= LIVER), ("tumor", TUMOR, label == TUMOR)):
        objects = found = n_boxes = hits = 0
        for z in range(label.shape[0]):
            prompt = prompts.get(z)
            boxes = np.zeros((0, 4)) if prompt is None else prompt.boxes[prompt.labels == cls]
            used = np.zeros(len(boxes), bool)
            components, n = ndimage.label(truth[z], structure=_EIGHT)
            for k, span in enumerate(ndimage.find_objects(components), start=1):
                rows, cols = np.nonzero(components[span] == k)
                rows, cols = rows + span[0].start, cols + span[1].start
                big = rows.size * sy * sx >= min_area_mm2
                h, w = truth.shape[1:]
                ideal = np.array([max(cols.min() - margin_mm / sx, 0), max(rows.min() - margin_mm / sy, 0),
                                  min(cols.max() + 1 + margin_mm / sx, w), min(rows.max() + 1 + margin_mm / sy, h)])
                ok = [_covers(b, rows, cols, coverage) and _iou(b, ideal) >= min_iou for b in boxes]
                used |= np.asarray(ok, bool)
                if big:
                    objects += 1
                    found += bool(any(ok))
            n_boxes += len(boxes)
            hits += int(used.sum())
        result[name] = {"objects": objects, "found": found, "recall": found / objects if objects else None,
                        "boxes": n_boxes, "true_boxes": hits, "precision": hits / n_boxes if n_boxes else None}
    return result


def _covers(box: np.ndarray, rows: np.ndarray, cols: np.ndarray, coverage: float) -> bool:
    """Whether pixel centres ``(rows + 0.5, cols + 0.5)`` lie inside ``box`` for at least ``coverage`` of them."""
    inside = (cols + 0.5 >= box[0]) & (cols + 0.5 <= box[2]) & (rows + 0.5 >= box[1]) & (rows + 0.5 <= box[3])
    return bool(inside.mean() >= coverage)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
