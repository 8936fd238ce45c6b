"""Voxel-overlap and surface metrics for binary 3D segmentations with voxel spacing.

Every metric is a function ``f(pred, ref, spacing=..., ...) -> float`` where

* ``pred``, ``ref``: binary masks of one structure (bool, or integers/floats that are
  only 0 and 1), the same shape, usually ``(Z, Y, X)`` in samliver's canonical
  orientation. Select a label first (``label == 2``); a label map with other values is
  rejected rather than silently binarised.
* ``spacing``: voxel size ``(z, y, x)`` in mm, three positive finite numbers. The
  overlap metrics do not depend on it; they accept and validate it (keyword only) so
  that all metrics can be called the same way. Surface metrics require it.

Overlap metrics (TP = ``|pred ∩ ref|`` voxels, ``|·|`` voxel counts):

=================  ======================================  ===========================
name               definition                              units
=================  ======================================  ===========================
``dice``           ``2 TP / (|pred| + |ref|)``             fraction 0..1
``iou``            ``TP / |pred ∪ ref|`` (Jaccard)         fraction 0..1
``voe``            ``1 - iou`` (volumetric overlap error)  fraction 0..1
``rvd``            ``(|pred| - |ref|) / |ref|``            signed fraction (0.1 = +10 %)
``sensitivity``    ``TP / |ref|`` (recall)                 fraction 0..1
``precision``      ``TP / |pred|``                         fraction 0..1
=================  ======================================  ===========================

Surface metrics, computed through MONAI (``monai.metrics``) on the masks' boundary:

=================  ==========================================================  =====
name               definition                                                  units
=================  ==========================================================  =====
``assd``           average symmetric surface distance: mean of the distances   mm
                   from every boundary voxel of each mask to the nearest
                   boundary voxel of the other, both directions pooled
                   (``compute_average_surface_distance(symmetric=True)``)
``hd95``           95th-percentile Hausdorff distance: the larger of the two   mm
                   directed 95th percentiles (``compute_hausdorff_distance(
                   percentile=95)``)
``mssd``           maximum symmetric surface distance (Hausdorff distance)      mm
``nsd``            normalised surface Dice at a tolerance in mm: the share of  0..1
                   the two surfaces' *area* lying within ``tolerance_mm`` of
                   the other surface, on surface elements with their areas
                   (``compute_surface_dice(use_subvoxels=True)``, the method of
                   Nikolov et al. 2021 used by MedSAM with 2 mm)
=================  ==========================================================  =====

Boundary voxels are the voxels of a mask with a 6-neighbour outside it; distances are
Euclidean between voxel centres, in mm, using ``spacing``. ASSD and MSSD equal medpy's
``assd``/``hd``. HD95 here is MONAI's (and DeepMind surface-distance's) robust Hausdorff,
``max(P95(pred→ref), P95(ref→pred))``; medpy's ``hd95`` instead takes one 95th
percentile of both directions pooled, which lies between the two directed percentiles,
so it is not larger than ours: on smooth shapes the two agree within a few per cent, on
irregular masks ours can be 50 % larger or more. Say which one a table reports.

Empty masks
-----------
What each metric returns when a mask is empty. These values are deliberate, never an
accident of ``0/0``; every function here follows this table, and so do the lesion-wise
metrics in :mod:`samliver.evaluation.lesions` (F1 follows Dice, recall follows
sensitivity, precision follows precision).

======================  ===============  ====================  ====================
metric                  both empty       ref empty, pred not   pred empty, ref not
======================  ===============  ====================  ====================
dice, iou               1.0              0.0                   0.0
voe                     0.0              1.0                   1.0
rvd                     NaN (undefined)  NaN (undefined)       -1.0
sensitivity             NaN (undefined)  NaN (undefined)       0.0
precision               NaN (undefined)  0.0                   NaN (undefined)
assd, hd95, mssd        0.0              inf                   inf
nsd                     1.0              0.0                   0.0
======================  ===============  ====================  ====================

The rules behind it: the symmetric agreement scores (Dice, IoU, VOE, NSD, surface
distances) treat two empty masks as perfect agreement and exactly one empty mask as
complete disagreement, with surface distances ``inf`` (no surface to measure to;
averaging them over cases then yields ``inf``, which forces an explicit choice,
e.g. reporting such cases separately, rather than hiding them). The one-sided ratios
(RVD, sensitivity, precision) are ``NaN`` when their own denominator (``|ref|`` or
``|pred|``) is zero: they are undefined there. Use ``numpy.nanmean`` to average them
over cases, and say how many cases were undefined.

Over several cases
------------------
LiTS reports two Dice flavours: the mean of per-case Dice, and the *global* Dice, one
Dice over all cases' voxels pooled (large livers weigh more). :func:`global_dice` and
:class:`OverlapAccumulator` give both (and the other overlap metrics pooled alike).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "OverlapAccumulator",
    "assd",
    "case_metrics",
    "dice",
    "global_dice",
    "hd95",
    "iou",
    "mssd",
    "nsd",
    "precision",
    "rvd",
    "sensitivity",
    "validate_spacing",
    "voe",
]

SpacingLike = Sequence[float] | np.ndarray

# ---------------------------------------------------------------------------------------
# validation


def validate_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    """Return ``spacing`` as three floats ``(z, y, x)`` in mm, or raise ``ValueError``.

    Accepts any sequence/array of three positive finite numbers.
    """
    try:
        arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 positive finite numbers (z, y, x) in mm, got {spacing!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"{name} must be 3 positive finite numbers (z, y, x) in mm, got {spacing!r}")
    return float(arr[0]), float(arr[1]), float(arr[2])


def as_binary(mask: Any, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a bool array; raise ``ValueError`` unless it holds only 0 and 1."""
    if hasattr(mask, "detach"):  # torch tensor
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a binary (bool or 0/1) array, got dtype {arr.dtype}")
    binary = arr != 0
    if not np.array_equal(arr[binary], np.ones(int(binary.sum()), dtype=arr.dtype)):
        values = np.unique(arr)[:6]
        raise ValueError(
            f"{name} must be binary (bool or only 0/1), got values {values.tolist()}; "
            "select one label first, e.g. label == 2"
        )
    return binary


def check_pair(pred: Any, ref: Any, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and binarise a ``(pred, ref)`` pair: same shape (and ``ndim`` when given)."""
    p = as_binary(pred, "pred")
    r = as_binary(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got pred {p.shape} and ref {r.shape}")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"pred and ref must be {ndim}D (Z, Y, X) masks, got shape {p.shape}")
    return p, r


# ---------------------------------------------------------------------------------------
# overlap


@dataclass(frozen=True)
class _Counts:
    tp: int
    n_pred: int
    n_ref: int

    @property
    def union(self) -> int:
        return self.n_pred + self.n_ref - self.tp


def _counts(pred: Any, ref: Any, spacing: Any) -> _Counts:
    p, r = check_pair(pred, ref)
    if spacing is not None:
        validate_spacing(spacing)
    return _Counts(int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r)))


def _dice(c: _Counts) -> float:
    if c.n_pred + c.n_ref == 0:
        return 1.0
    return 2.0 * c.tp / (c.n_pred + c.n_ref)


def _iou(c: _Counts) -> float:
    if c.union == 0:
        return 1.0
    return c.tp / c.union


def _rvd(c: _Counts) -> float:
    if c.n_ref == 0:
        return math.nan
    return (c.n_pred - c.n_ref) / c.n_ref


def _sensitivity(c: _Counts) -> float:
    return math.nan if c.n_ref == 0 else c.tp / c.n_ref


def _precision(c: _Counts) -> float:
    return math.nan if c.n_pred == 0 else c.tp / c.n_pred


def dice(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Dice coefficient ``2|P∩R| / (|P|+|R|)`` (fraction 0..1); 1 if both empty, 0 if one is."""
    return _dice(_counts(pred, ref, spacing))


def iou(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Intersection over union (Jaccard) ``|P∩R| / |P∪R|`` (fraction 0..1); 1 if both empty."""
    return _iou(_counts(pred, ref, spacing))


def voe(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Volumetric overlap error ``1 - IoU`` (fraction 0..1); 0 if both empty, 1 if one is."""
    return 1.0 - _iou(_counts(pred, ref, spacing))


def rvd(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Relative volume difference ``(|P|-|R|) / |R|`` as a signed fraction (0.1 = 10 % too large).

    ``NaN`` when the reference is empty (undefined); ``-1`` when only the prediction is.
    """
    return _rvd(_counts(pred, ref, spacing))


def sensitivity(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Sensitivity (voxel recall) ``|P∩R| / |R|``; ``NaN`` when the reference is empty."""
    return _sensitivity(_counts(pred, ref, spacing))


def precision(pred: Any, ref: Any, *, spacing: SpacingLike | None = None) -> float:
    """Precision (positive predictive value) ``|P∩R| / |P|``; ``NaN`` when the prediction is empty."""
    return _precision(_counts(pred, ref, spacing))


@dataclass
class OverlapAccumulator:
    """Pool voxel counts over cases for the global (LiTS "Dice global") overlap metrics.

    ``update(pred, ref)`` adds one case; ``global_dice`` etc. are one metric over all
    voxels pooled; ``dice_per_case`` keeps each case's Dice and ``mean_dice`` averages it
    (LiTS "Dice per case"). Empty cases follow the module's table, pooled or per case;
    the global metrics raise ``ValueError`` before any case was added.
    """

    tp: int = 0
    n_pred: int = 0
    n_ref: int = 0
    dice_per_case: list[float] = field(default_factory=list)

    def update(self, pred: Any, ref: Any) -> float:
        """Add one case; return its Dice."""
        c = _counts(pred, ref, None)
        self.tp += c.tp
        self.n_pred += c.n_pred
        self.n_ref += c.n_ref
        d = _dice(c)
        self.dice_per_case.append(d)
        return d

    @property
    def _pooled(self) -> _Counts:
        if not self.dice_per_case:
            raise ValueError("OverlapAccumulator has no cases yet; call update(pred, ref) first")
        return _Counts(self.tp, self.n_pred, self.n_ref)

    @property
    def n_cases(self) -> int:
        return len(self.dice_per_case)

    @property
    def mean_dice(self) -> float:
        """Mean of per-case Dice (LiTS "Dice per case")."""
        self._pooled  # raises before any case was added
        return float(np.mean(self.dice_per_case))

    @property
    def global_dice(self) -> float:
        """One Dice over all voxels of all cases pooled."""
        return _dice(self._pooled)

    @property
    def global_iou(self) -> float:
        return _iou(self._pooled)

    @property
    def global_voe(self) -> float:
        return 1.0 - _iou(self._pooled)

    @property
    def global_rvd(self) -> float:
        return _rvd(self._pooled)

    @property
    def global_sensitivity(self) -> float:
        return _sensitivity(self._pooled)

    @property
    def global_precision(self) -> float:
        return _precision(self._pooled)


def global_dice(preds: Iterable[Any], refs: Iterable[Any]) -> float:
    """Global Dice: one Dice over all cases' voxels pooled (cases may differ in shape).

    ``preds`` and ``refs`` are matching sequences of binary masks; 1 if all are empty.
    ``ValueError`` for zero cases or a count mismatch.
    """
    acc = OverlapAccumulator()
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs must have the same number of cases, got {len(preds)} and {len(refs)}")
    for p, r in zip(preds, refs):
        acc.update(p, r)
    return acc.global_dice


# ---------------------------------------------------------------------------------------
# surface


def _surface_inputs(pred: Any, ref: Any, spacing: Any) -> tuple[np.ndarray, np.ndarray, list[float], float | None]:
    """Validate; return (pred, ref, spacing list, value for an empty case or None)."""
    p, r = check_pair(pred, ref, ndim=3)
    sp = list(validate_spacing(spacing))
    has_p, has_r = bool(p.any()), bool(r.any())
    if not has_p and not has_r:
        return p, r, sp, 0.0
    if has_p != has_r:
        return p, r, sp, math.inf
    return p, r, sp, None


def _crop_pair(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus a one-voxel background margin.

    The margin keeps every mask border a surface (as on the full grid); it saves time
    and memory on large CT grids. Distances do not depend on the crop.
    """
    idx = np.argwhere(p | r)
    lo = np.maximum(idx.min(axis=0) - 1, 0)
    hi = idx.max(axis=0) + 2
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    pc, rc = p[sl], r[sl]
    pad = [(int(lo[i] == 0), int(hi[i] > p.shape[i])) for i in range(p.ndim)]
    if any(a or b for a, b in pad):
        pc, rc = np.pad(pc, pad), np.pad(rc, pad)
    return pc, rc


def _to_monai(p: np.ndarray, r: np.ndarray) -> tuple[Any, Any]:
    import torch

    pc, rc = _crop_pair(p, r)
    return torch.from_numpy(pc)[None, None], torch.from_numpy(rc)[None, None]


def assd(pred: Any, ref: Any, spacing: SpacingLike) -> float:
    """Average symmetric surface distance in mm (MONAI, both directions pooled).

    0 if both masks are empty, ``inf`` if exactly one is.
    """
    p, r, sp, empty = _surface_inputs(pred, ref, spacing)
    if empty is not None:
        return empty
    from monai.metrics import compute_average_surface_distance

    tp, tr = _to_monai(p, r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_average_surface_distance(tp, tr, include_background=True, symmetric=True, spacing=sp)
    return float(out.reshape(-1)[0])


def _hausdorff(pred: Any, ref: Any, spacing: Any, percentile: float | None) -> float:
    p, r, sp, empty = _surface_inputs(pred, ref, spacing)
    if empty is not None:
        return empty
    from monai.metrics import compute_hausdorff_distance

    tp, tr = _to_monai(p, r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_hausdorff_distance(tp, tr, include_background=True, percentile=percentile, spacing=sp)
    return float(out.reshape(-1)[0])


def hd95(pred: Any, ref: Any, spacing: SpacingLike) -> float:
    """95th-percentile Hausdorff distance in mm: max of the two directed 95th percentiles.

    0 if both masks are empty, ``inf`` if exactly one is.
    """
    return _hausdorff(pred, ref, spacing, 95.0)


def mssd(pred: Any, ref: Any, spacing: SpacingLike) -> float:
    """Maximum symmetric surface distance (Hausdorff distance) in mm.

    0 if both masks are empty, ``inf`` if exactly one is.
    """
    return _hausdorff(pred, ref, spacing, None)


def nsd(pred: Any, ref: Any, spacing: SpacingLike, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice (0..1) at ``tolerance_mm`` (mm), on area-weighted surface elements.

    1 if both masks are empty, 0 if exactly one is.
    """
    tol = float(tolerance_mm)
    if not math.isfinite(tol) or tol < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0 (mm), got {tolerance_mm!r}")
    p, r, sp, empty = _surface_inputs(pred, ref, spacing)
    if empty is not None:
        return 1.0 if empty == 0.0 else 0.0
    from monai.metrics import compute_surface_dice

    tp, tr = _to_monai(p, r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = compute_surface_dice(
            tp.float(), tr.float(), [tol], include_background=True, spacing=sp, use_subvoxels=True
        )
    return float(out.reshape(-1)[0])


# ---------------------------------------------------------------------------------------
# everything at once


def case_metrics(pred: Any, ref: Any, spacing: SpacingLike, tolerance_mm: float = 2.0) -> dict[str, float]:
    """All overlap and surface metrics of one case, as ``{name: value}``.

    Keys: ``dice iou voe rvd sensitivity precision assd hd95 mssd nsd``, plus
    ``pred_volume_ml`` and ``ref_volume_ml`` (mL). Values follow the module's table.
    """
    p, r = check_pair(pred, ref, ndim=3)
    sp = validate_spacing(spacing)
    c = _Counts(int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r)))
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    return {
        "dice": _dice(c),
        "iou": _iou(c),
        "voe": 1.0 - _iou(c),
        "rvd": _rvd(c),
        "sensitivity": _sensitivity(c),
        "precision": _precision(c),
        "assd": assd(p, r, sp),
        "hd95": hd95(p, r, sp),
        "mssd": mssd(p, r, sp),
        "nsd": nsd(p, r, sp, tolerance_mm),
        "pred_volume_ml": c.n_pred * voxel_ml,
        "ref_volume_ml": c.n_ref * voxel_ml,
    }
