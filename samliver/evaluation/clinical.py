"""Clinical measurements of liver-tumour segmentations: volumes, tumour burden, liver
volume error and RECIST diameter error.

Arrays are ``(Z, Y, X)``; ``spacing`` is ``(z, y, x)`` in mm. Volumes in mL (voxel volume =
product of spacing in mm³ / 1000). Liver volume is the whole organ (liver + tumour labels).
Tumour burden = tumour volume / whole-liver volume as a fraction (NaN when the liver is empty).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .lesions import evaluate_lesions, volume_ml
from .metrics import SpacingLike, check_pair, validate_spacing

__all__ = ["clinical_metrics", "liver_volume_error_ml", "tumour_burden", "tumour_burden_from_labels"]


def tumour_burden(tumour: Any, liver: Any) -> float:
    """Tumour burden: tumour volume / whole-liver volume, as a fraction (0.05 = 5 %).

    ``tumour`` and ``liver`` are binary masks of one shape. The whole liver is taken as
    ``liver ∪ tumour``, so ``liver`` may be either the whole organ (LiTS labels >= 1) or
    the parenchyma alone (label 1). NaN when that whole liver is empty. Spacing cancels.
    """
    t, l_ = check_pair(tumour, liver)
    organ = int(np.count_nonzero(t | l_))
    return math.nan if organ == 0 else int(np.count_nonzero(t)) / organ


def tumour_burden_from_labels(labels: Any, liver_label: int = 1, tumour_label: int = 2) -> float:
    """Tumour burden of a LiTS/MSD label map (0 background, 1 liver, 2 tumour)."""
    lab = np.asarray(labels)
    return tumour_burden(lab == tumour_label, (lab == liver_label) | (lab == tumour_label))


def liver_volume_error_ml(pred: Any, ref: Any, spacing: SpacingLike) -> float:
    """Signed liver volume error ``V(pred) - V(ref)`` in mL (positive = over-segmented).

    ``pred``, ``ref``: binary whole-liver masks (liver + tumour). Take ``abs`` for the
    absolute error.
    """
    p, r = check_pair(pred, ref)
    return volume_ml(p, spacing) - volume_ml(r, spacing)


def clinical_metrics(
    pred_labels: Any,
    ref_labels: Any,
    spacing: SpacingLike,
    liver_label: int = 1,
    tumour_label: int = 2,
    connectivity: int = 26,
) -> dict[str, float]:
    """Clinical measurements of a predicted vs reference label map ``(Z, Y, X)``.

    Returns (volumes mL, lengths mm, burden as a fraction):
    ``liver_volume_pred_ml``, ``liver_volume_ref_ml``, ``liver_volume_error_ml`` (signed,
    pred - ref), ``liver_volume_abs_error_ml``, ``tumour_volume_pred_ml``,
    ``tumour_volume_ref_ml``, ``tumour_burden_pred``, ``tumour_burden_ref``,
    ``tumour_burden_abs_error`` (NaN when either liver is empty),
    ``recist_abs_error_mm`` (mean absolute longest-axial-diameter error over reference
    lesions that a predicted lesion overlaps; NaN if none), ``max_diameter_pred_mm`` and
    ``max_diameter_ref_mm`` (largest lesion, 0 without lesions).
    """
    pl, rl = np.asarray(pred_labels), np.asarray(ref_labels)
    if pl.shape != rl.shape:
        raise ValueError(f"pred_labels and ref_labels must have the same shape, got {pl.shape} and {rl.shape}")
    if pl.ndim != 3:
        raise ValueError(f"label maps must be 3D (Z, Y, X), got shape {pl.shape}")
    sp = validate_spacing(spacing)
    p_liver = (pl == liver_label) | (pl == tumour_label)
    r_liver = (rl == liver_label) | (rl == tumour_label)
    p_tum, r_tum = pl == tumour_label, rl == tumour_label
    rep = evaluate_lesions(p_tum, r_tum, sp, connectivity=connectivity)
    bp, br = tumour_burden(p_tum, p_liver), tumour_burden(r_tum, r_liver)
    lv_p, lv_r = volume_ml(p_liver, sp), volume_ml(r_liver, sp)
    return {
        "liver_volume_pred_ml": lv_p,
        "liver_volume_ref_ml": lv_r,
        "liver_volume_error_ml": lv_p - lv_r,
        "liver_volume_abs_error_ml": abs(lv_p - lv_r),
        "tumour_volume_pred_ml": volume_ml(p_tum, sp),
        "tumour_volume_ref_ml": volume_ml(r_tum, sp),
        "tumour_burden_pred": bp,
        "tumour_burden_ref": br,
        "tumour_burden_abs_error": abs(bp - br),
        "recist_abs_error_mm": rep.mean_diameter_error_mm,
        "max_diameter_pred_mm": max((les.diameter_mm for les in rep.predicted), default=0.0),
        "max_diameter_ref_mm": max((les.diameter_mm for les in rep.reference), default=0.0),
    }
