"""Validation and testing: 3D Dice of liver and tumour on held-out cases, through the `Predictor`.

Prompted models segment each case with `Predictor.segment_volume` from a tight ground-truth box per
object per slice (the liver, and each tumour component, on every slice where it appears); models with
a prompt-free head segment it with `Predictor.segment_head` (the raw head, no 3D cleanup). Dice is
MONAI's ``compute_dice`` per case on the liver (labels 1 and 2) and the tumour (label 2); a case without
tumour (or liver) in its ground truth gives NaN for that class and is left out of the mean.

Cases are read from the training cache. A uint8 cache holds exactly the grey values the model's own
``preprocess`` makes from HU with the cache's window, so its slices are handed to the predictor with the
window ``(0, 255)``, which reproduces them exactly; an int16 cache holds HU and uses its window.
Across processes, each takes its share of cases from a prepared loader and ``gather_for_metrics``
collects the per-case rows.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice

from samliver.data import CaseCache, objects_from_label
from samliver.data.case import LIVER, TUMOR
from samliver.predictor import Predictor
from samliver.prompts import Prompts

from .prompting import object_boxes

CLASSES = ("liver", "tumor")


def case_volume(case: CaseCache, window: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float]]:
    """``(volume (Z, H, W) float32, window)`` to hand to the predictor for a cached case."""
    image = np.asarray(case.image)
    if image.dtype == np.uint8:
        return image.astype(np.float32), (0.0, 255.0)
    return image.astype(np.float32), tuple(window)


def truth_prompts(label: np.ndarray, targets: Sequence[str], has_liver: bool = True) -> dict[int, Prompts]:
    """Tight ground-truth boxes per object per slice of a label volume ``(Z, H, W)``."""
    prompts = {}
    for z in np.flatnonzero((label > 0).any(axis=(1, 2))):
        masks, labels = objects_from_label(label[z], liver="liver" in targets and has_liver, tumor="tumor" in targets)
        if len(labels):
            prompts[int(z)] = Prompts(boxes=object_boxes(masks), labels=labels.astype(np.uint8))
    return prompts


def restrict(label: np.ndarray, targets: Sequence[str]) -> np.ndarray:
    """The label volume with only the target classes (liver only: tumour counts as liver)."""
    if tuple(targets) == ("liver",):
        return (label >= LIVER).astype(np.uint8)
    if tuple(targets) == ("tumor",):
        return np.where(label == TUMOR, TUMOR, 0).astype(np.uint8)
    return label


def dice_per_class(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """``[liver, tumour]`` 3D Dice of two label volumes (NaN where the truth lacks the class)."""
    def channels(volume: np.ndarray) -> torch.Tensor:
        v = torch.as_tensor(volume)
        return torch.stack([v >= LIVER, v == TUMOR])[None].float()          # (1, 2, Z, H, W)

    return [float(x) for x in compute_dice(channels(pred), channels(truth), include_background=True,
                                           ignore_empty=True)[0]]


def segment_case(predictor: Predictor, kind: str, case: CaseCache, window: tuple[float, float],
                 targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(prediction, restricted truth)`` label volumes of one cached case."""
    volume, win = case_volume(case, window)
    truth = restrict(np.array(case.label), targets)
    if kind == "head":
        pred = predictor.segment_head(volume, window=win)
    else:
        pred = predictor.segment_volume(volume, truth_prompts(truth, targets, case.has_liver), window=win)
    return pred, truth


def evaluate(accelerator: Any, model: torch.nn.Module, kind: str, cases: Sequence[CaseCache], loader: Any,
             window: tuple[float, float], targets: Sequence[str]) -> dict[str, Any]:
    """Mean 3D Dice over ``cases`` (sharded over processes by ``loader``, a prepared `eval_loader`).

    Returns:
        ``{"liver": mean, "tumor": mean, "score": mean of the classes present, "cases": {name: [liver, tumour]}}``
        (NaN-free means; a class absent from every case is None).
    """
    was_training = model.training
    predictor = Predictor(model)
    rows = []
    with torch.no_grad(), accelerator.autocast():
        for batch in loader:
            index = int(batch[0])
            pred, truth = segment_case(predictor, kind, cases[index], window, targets)
            row = torch.tensor([[float(index), *dice_per_class(pred, truth)]], device=accelerator.device)
            rows.append(accelerator.gather_for_metrics(row))
    model.train(was_training)
    table = torch.cat(rows).cpu().numpy() if rows else np.zeros((0, 3))
    return summarize({cases[int(r[0])].name: [float(r[1]), float(r[2])] for r in table}, targets)


def summarize(per_case: dict[str, list[float]], targets: Sequence[str]) -> dict[str, Any]:
    """Means over cases of each class (NaNs left out) and their mean, the selection ``score``."""
    out: dict[str, Any] = {"cases": {k: [None if math.isnan(v) else round(v, 6) for v in vals]
                                     for k, vals in sorted(per_case.items())}}
    values = []
    for i, name in enumerate(CLASSES):
        column = [v[i] for v in per_case.values() if not math.isnan(v[i])]
        mean = float(np.mean(column)) if column and name in targets else None
        out[name] = mean
        if mean is not None:
            values.append(mean)
    out["score"] = float(np.mean(values)) if values else None
    return out
