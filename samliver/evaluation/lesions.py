"""Lesion-wise detection for liver-tumour CT segmentations.

Arrays are ``(Z, Y, X)`` in samliver's canonical orientation (axis 0 is the axial
slice index); ``spacing`` is ``(z, y, x)`` in mm. Tumour masks are binary (select a label
first, e.g. ``label == 2``); helpers that take label maps say so.

Lesions are the 3D connected components (26-connectivity by default) and lesion size is the
RECIST longest axial diameter, as :mod:`samliver.evaluation.lesion_sizes` defines them (re-exported
here), with its size bins ``"<10mm"``, ``"10-20mm"``, ``">20mm"``.

Detection (:func:`evaluate_lesions`)
------------------------------------
* LiTS criterion (``iou``): a reference lesion is detected when one predicted lesion
  overlaps it with IoU > 0.5 (``iou_threshold``). IoU > 0.5 can pair each lesion with
  at most one lesion of the other mask, so TP is one number; precision = TP / predicted
  lesions, recall = TP / reference lesions, F1 = 2 TP / (predicted + reference).
* Any overlap (``any_overlap``): a reference lesion is detected when any predicted lesion
  touches it (recall, counted on reference lesions); a predicted lesion is a true
  positive when it touches any reference lesion (precision, counted on predicted
  lesions); F1 is their harmonic mean.

Empty cases follow :mod:`samliver.evaluation.metrics`: recall is NaN without reference
lesions, precision is NaN without predicted lesions, F1 is 1 when both have none and 0
when exactly one has none. Pool cases by adding :class:`DetectionCounts` (``a + b``) and
:class:`SizeBinSummary` rather than averaging per-case ratios.

Per-lesion Dice is the Dice between a reference lesion and the union of the predicted
lesions that overlap it (0 for a missed lesion). Its predicted diameter is the longest
axial diameter of that same union; for a missed lesion the predicted diameter and the
diameter error are NaN (detection is reported separately).

Clinical measurements (volumes, tumour burden) are in :mod:`samliver.evaluation.clinical`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .lesion_sizes import (SIZE_BINS, component_diameters, label_lesions, lesion_diameters,
                           longest_axial_diameter, size_bin, volume_ml)
from .metrics import SpacingLike, check_pair, validate_spacing

__all__ = [
    "SIZE_BINS",
    "DetectionCounts",
    "LesionReport",
    "PredictedLesion",
    "ReferenceLesion",
    "SizeBinSummary",
    "evaluate_lesions",
    "label_lesions",
    "lesion_diameters",
    "longest_axial_diameter",
    "pool_size_bins",
    "size_bin",
    "volume_ml",
]


# ---------------------------------------------------------------------------------------
# detection


@dataclass(frozen=True)
class DetectionCounts:
    """Lesion detection counts of one case, or pooled over cases with ``+``.

    ``tp_ref``: reference lesions detected; ``tp_pred``: predicted lesions that are true
    positives (equal to ``tp_ref`` under the IoU criterion).
    """

    n_ref: int = 0
    n_pred: int = 0
    tp_ref: int = 0
    tp_pred: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.n_ref + other.n_ref,
            self.n_pred + other.n_pred,
            self.tp_ref + other.tp_ref,
            self.tp_pred + other.tp_pred,
        )

    @property
    def false_negatives(self) -> int:
        return self.n_ref - self.tp_ref

    @property
    def false_positives(self) -> int:
        return self.n_pred - self.tp_pred

    @property
    def recall(self) -> float:
        """Detected reference lesions / reference lesions; NaN without reference lesions."""
        return math.nan if self.n_ref == 0 else self.tp_ref / self.n_ref

    @property
    def precision(self) -> float:
        """True-positive predicted lesions / predicted lesions; NaN without predicted lesions."""
        return math.nan if self.n_pred == 0 else self.tp_pred / self.n_pred

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall; 1 if neither mask has lesions, 0 if one has none."""
        if self.n_ref == 0 and self.n_pred == 0:
            return 1.0
        if self.n_ref == 0 or self.n_pred == 0:
            return 0.0
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


@dataclass(frozen=True)
class ReferenceLesion:
    """One reference lesion and how the prediction found it (lengths mm, volumes mL)."""

    label: int
    volume_ml: float
    diameter_mm: float
    size_bin: str
    best_iou: float
    detected: bool
    overlapped: bool
    dice: float
    pred_diameter_mm: float
    diameter_error_mm: float


@dataclass(frozen=True)
class PredictedLesion:
    """One predicted lesion (lengths mm, volumes mL); ``matched`` = IoU criterion."""

    label: int
    volume_ml: float
    diameter_mm: float
    best_iou: float
    matched: bool
    overlapped: bool


@dataclass
class SizeBinSummary:
    """Detection of reference lesions in one size bin; add summaries to pool cases.

    ``false_positives`` counts predicted lesions not matched under the IoU criterion whose
    own longest axial diameter falls in the bin.
    """

    n: int = 0
    detected: int = 0
    overlapped: int = 0
    dice_sum: float = 0.0
    diameter_error_sum_mm: float = 0.0
    false_positives: int = 0

    def __add__(self, other: SizeBinSummary) -> SizeBinSummary:
        return SizeBinSummary(
            self.n + other.n,
            self.detected + other.detected,
            self.overlapped + other.overlapped,
            self.dice_sum + other.dice_sum,
            self.diameter_error_sum_mm + other.diameter_error_sum_mm,
            self.false_positives + other.false_positives,
        )

    @property
    def recall(self) -> float:
        """Detected (IoU > threshold) / lesions in the bin; NaN for an empty bin."""
        return math.nan if self.n == 0 else self.detected / self.n

    @property
    def recall_any_overlap(self) -> float:
        return math.nan if self.n == 0 else self.overlapped / self.n

    @property
    def mean_dice(self) -> float:
        """Mean per-lesion Dice (missed lesions count 0); NaN for an empty bin."""
        return math.nan if self.n == 0 else self.dice_sum / self.n

    @property
    def mean_diameter_error_mm(self) -> float:
        """Mean absolute RECIST diameter error (mm) over the bin's overlapped lesions."""
        return math.nan if self.overlapped == 0 else self.diameter_error_sum_mm / self.overlapped


@dataclass
class LesionReport:
    """Lesion-wise evaluation of one case (see the module docstring for definitions)."""

    reference: list[ReferenceLesion]
    predicted: list[PredictedLesion]
    iou: DetectionCounts
    any_overlap: DetectionCounts
    by_size: dict[str, SizeBinSummary] = field(default_factory=dict)

    @property
    def mean_diameter_error_mm(self) -> float:
        """Mean absolute RECIST diameter error (mm) over overlapped reference lesions; NaN if none."""
        errs = [les.diameter_error_mm for les in self.reference if les.overlapped]
        return float(np.mean(errs)) if errs else math.nan


def pool_size_bins(reports: Iterable[LesionReport]) -> dict[str, SizeBinSummary]:
    """Sum the size-bin summaries of several cases."""
    out = {name: SizeBinSummary() for name, _, _ in SIZE_BINS}
    for rep in reports:
        for name, s in rep.by_size.items():
            out[name] = out[name] + s
    return out


def evaluate_lesions(
    pred: Any,
    ref: Any,
    spacing: SpacingLike,
    iou_threshold: float = 0.5,
    connectivity: int = 26,
) -> LesionReport:
    """Lesion-wise detection, per-lesion Dice and RECIST diameters of binary tumour masks.

    ``pred``, ``ref``: binary ``(Z, Y, X)`` tumour masks; ``spacing`` ``(z, y, x)`` mm.
    A reference lesion is detected when a predicted lesion has IoU > ``iou_threshold``
    with it (LiTS: 0.5); any-overlap detection is reported too.
    """
    p, r = check_pair(pred, ref, ndim=3)
    sp = validate_spacing(spacing)
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    box = ndimage.find_objects((p | r).astype(np.uint8))
    if box:  # work on the joint bounding box: components and distances do not change
        p, r = p[box[0]], r[box[0]]
    ref_lab, n_ref = label_lesions(r, connectivity)
    pred_lab, n_pred = label_lesions(p, connectivity)
    ref_size = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_size = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)

    # Overlap of every (reference, predicted) lesion pair that touches.
    both = (ref_lab > 0) & (pred_lab > 0)
    key = ref_lab[both].astype(np.int64) * (n_pred + 1) + pred_lab[both]
    pairs, inter = np.unique(key, return_counts=True)
    pr, pp = pairs // (n_pred + 1), pairs % (n_pred + 1)
    pair_iou = inter / (ref_size[pr] + pred_size[pp] - inter)

    ref_best = np.zeros(n_ref + 1)
    pred_best = np.zeros(n_pred + 1)
    np.maximum.at(ref_best, pr, pair_iou)
    np.maximum.at(pred_best, pp, pair_iou)
    ref_touch = np.zeros(n_ref + 1, bool)
    ref_touch[pr] = True
    pred_touch = np.zeros(n_pred + 1, bool)
    pred_touch[pp] = True

    ref_diam = component_diameters(ref_lab, n_ref, sp)
    pred_diam = component_diameters(pred_lab, n_pred, sp)
    pred_boxes = ndimage.find_objects(pred_lab, max_label=n_pred)

    reference: list[ReferenceLesion] = []
    for i in range(1, n_ref + 1):
        sel = pr == i
        partners = pp[sel]
        if partners.size:
            inter_sum = int(inter[sel].sum())
            union_size = int(pred_size[partners].sum())
            les_dice = 2.0 * inter_sum / (int(ref_size[i]) + union_size)
            if partners.size == 1:
                pdiam = pred_diam[int(partners[0]) - 1]
            else:
                lo = [min(pred_boxes[j - 1][a].start for j in partners) for a in range(3)]
                hi = [max(pred_boxes[j - 1][a].stop for j in partners) for a in range(3)]
                union = np.isin(pred_lab[tuple(map(slice, lo, hi))], partners)
                pdiam = longest_axial_diameter(union, sp)
            err = abs(pdiam - ref_diam[i - 1])
        else:
            les_dice, pdiam, err = 0.0, math.nan, math.nan
        reference.append(
            ReferenceLesion(
                label=i,
                volume_ml=int(ref_size[i]) * voxel_ml,
                diameter_mm=ref_diam[i - 1],
                size_bin=size_bin(ref_diam[i - 1]),
                best_iou=float(ref_best[i]),
                detected=bool(ref_best[i] > iou_threshold),
                overlapped=bool(ref_touch[i]),
                dice=float(les_dice),
                pred_diameter_mm=float(pdiam),
                diameter_error_mm=float(err),
            )
        )
    predicted = [
        PredictedLesion(
            label=j,
            volume_ml=int(pred_size[j]) * voxel_ml,
            diameter_mm=pred_diam[j - 1],
            best_iou=float(pred_best[j]),
            matched=bool(pred_best[j] > iou_threshold),
            overlapped=bool(pred_touch[j]),
        )
        for j in range(1, n_pred + 1)
    ]

    iou_counts = DetectionCounts(
        n_ref, n_pred, sum(les.detected for les in reference), sum(les.matched for les in predicted)
    )
    any_counts = DetectionCounts(
        n_ref, n_pred, sum(les.overlapped for les in reference), sum(les.overlapped for les in predicted)
    )
    by_size = {name: SizeBinSummary() for name, _, _ in SIZE_BINS}
    for les in reference:
        s = by_size[les.size_bin]
        s.n += 1
        s.detected += les.detected
        s.overlapped += les.overlapped
        s.dice_sum += les.dice
        if les.overlapped:
            s.diameter_error_sum_mm += les.diameter_error_mm
    for les in predicted:
        if not les.matched:
            by_size[size_bin(les.diameter_mm)].false_positives += 1
    return LesionReport(reference, predicted, iou_counts, any_counts, by_size)
