"""Prompt simulation for training, as in SAM's training: a jittered box or a few clicks per object
from its ground-truth mask, then optional corrective clicks sampled from the previous error.

All functions take the object masks of one slice, ``(N, H, W)`` bool, and a seeded
``numpy.random.Generator``, so a training item's prompts are a function of its seed alone
(the trainer derives that seed from the run seed, the epoch and the item's draw position, which
is what makes a resumed run identical to an uninterrupted one).

With text prompts enabled, a fraction of slices are prompted by class text instead (`text_queries`).

`PromptSimulator` draws each item's first prompts where the item is made (in the DataLoader, on the
host), as a `ClickPlan` or `TextPlan`, so the training step never reads masks back from the device;
only corrective clicks, which depend on the model's own prediction, need that read-back.

Coordinates follow `samliver.prompts`: boxes in pixel edges (``x1 = last column + 1``), clicks at
pixel ``(x = column, y = row)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from samliver.data.case import LIVER
from samliver.prompts import Prompts
from samliver.prompts.clip_text import TextClass

from .config import PromptSettings


@dataclass
class ClickPlan:
    """A slice prompted by boxes or clicks: the initial ``prompts`` of its K chosen objects (the item's
    ``objects`` are those K, in this order), their masks on the host ``(K, H, W)`` bool (for corrective
    clicks) and the prompt stream ``rng``, continued by the corrective rounds."""

    prompts: Prompts
    masks: np.ndarray
    rng: np.random.Generator


@dataclass
class TextPlan:
    """A slice prompted by class text (`text_queries`): ``targets`` ``(Q, H, W)`` bool, ``texts`` (Q),
    ``labels`` ``(Q,)`` uint8."""

    targets: np.ndarray
    texts: list[str]
    labels: np.ndarray


class PromptSimulator:
    """Draws the prompts of one training item from its objects and its prompt seed.

    With ``text_classes``, a fraction ``text_prob`` of items are prompted by text; the others keep at most
    ``settings.max_objects`` objects (`choose_objects`) and get `initial_prompts`.
    """

    def __init__(self, settings: PromptSettings, text_prob: float = 0.0,
                 text_classes: Sequence[TextClass] = ()) -> None:
        self.settings, self.text_prob, self.text_classes = settings, float(text_prob), tuple(text_classes)

    def __call__(self, objects: np.ndarray, labels: np.ndarray,
                 seed: int) -> tuple[ClickPlan | TextPlan | None, np.ndarray]:
        """Args: ``objects`` ``(N, H, W)`` bool and ``labels`` ``(N,)`` of one slice; ``seed`` its prompt seed.

        Returns:
            ``(plan, keep)``: the plan (None for a slice without objects or text queries) and the indices
            ``(K,)`` of the objects the click plan prompts (none for a text plan, which carries its targets).
        """
        n, none = len(objects), np.arange(0)
        if n == 0:
            return None, none
        rng = np.random.default_rng(seed)
        if self.text_classes and rng.random() < self.text_prob:
            targets, texts, query_labels = text_queries(objects, labels, self.text_classes, rng)
            return (TextPlan(targets, texts, query_labels) if texts else None), none
        keep = choose_objects(n, self.settings.max_objects, rng)
        masks = objects[keep]
        prompts = initial_prompts(masks, labels[keep].astype(np.uint8), self.settings, rng)
        return ClickPlan(prompts, masks, rng), keep


def object_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes ``(N, 4)`` float32 xyxy (pixel edges) around each whole object mask ``(N, H, W)``
    (an object in several pieces, e.g. two liver lobes, gets one box around all of them)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def jittered_boxes(masks: np.ndarray, settings: PromptSettings, rng: np.random.Generator) -> np.ndarray:
    """Object boxes whose sides each move by ``U(-j, j)``, ``j = min(box_jitter * side, box_jitter_max_px)``,
    clipped to the slice and kept at least one pixel wide. Returns ``(N, 4)`` float32."""
    boxes = object_boxes(masks)
    h, w = masks.shape[-2:]
    sides = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)          # (N, 2): w, h
    reach = np.minimum(settings.box_jitter * sides, settings.box_jitter_max_px)               # (N, 2)
    jitter = rng.uniform(-1.0, 1.0, boxes.shape).astype(np.float32) * np.tile(reach, 2)
    out = np.clip(boxes + jitter, 0, [w, h, w, h]).astype(np.float32)
    out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + 1, w))
    out[:, 0] = np.minimum(out[:, 0], out[:, 2] - 1)
    out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + 1, h))
    out[:, 1] = np.minimum(out[:, 1], out[:, 3] - 1)
    return out


def _pick(region: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` pixels ``(count, 2)`` as ``(x, y)``, uniform over ``region`` ``(H, W)`` bool (non-empty)."""
    rows, cols = np.nonzero(region)
    choice = rng.integers(0, rows.size, count)
    return np.stack([cols[choice], rows[choice]], axis=1).astype(np.float32)


def _near_background(mask: np.ndarray) -> np.ndarray:
    """Background pixels inside the object's box grown by half its size (anywhere outside if none)."""
    rows, cols = np.nonzero(mask)
    gy, gx = (rows.max() - rows.min() + 1) // 2 + 1, (cols.max() - cols.min() + 1) // 2 + 1
    near = np.zeros_like(mask)
    near[max(rows.min() - gy, 0):rows.max() + gy + 1, max(cols.min() - gx, 0):cols.max() + gx + 1] = True
    near &= ~mask
    return near if near.any() else ~mask


def sampled_points(masks: np.ndarray, n_pos: int, n_neg: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pos`` clicks uniform inside each object and ``n_neg`` in the background near it.

    Returns:
        ``points (N, n_pos + n_neg, 2)`` float32 ``(x, y)`` and ``point_labels (N, n_pos + n_neg)`` int64.
    """
    points = []
    for mask in masks:
        parts = [_pick(mask, n_pos, rng)]
        if n_neg:
            background = _near_background(mask)
            parts.append(_pick(background, n_neg, rng) if background.any() else _pick(mask, n_neg, rng))
        points.append(np.concatenate(parts))
    labels = np.array([1] * n_pos + [0] * n_neg, np.int64)
    return np.stack(points), np.tile(labels, (len(masks), 1))


def initial_prompts(masks: np.ndarray, labels: np.ndarray, settings: PromptSettings,
                    rng: np.random.Generator) -> Prompts:
    """The first prompt of each object of one slice: with probability ``box_prob`` a jittered box for
    every object, else ``1..max_points`` positive and ``0..max_negative_points`` negative clicks.

    Args:
        masks: ``(N, H, W)`` bool, every mask non-empty.
        labels: ``(N,)`` classes (1 liver, 2 tumour).
    """
    if rng.random() < settings.box_prob:
        return Prompts(boxes=jittered_boxes(masks, settings, rng), labels=labels)
    n_pos = int(rng.integers(1, settings.max_points + 1))
    n_neg = int(rng.integers(0, settings.max_negative_points + 1))
    points, point_labels = sampled_points(masks, n_pos, n_neg, rng)
    return Prompts(points=points, point_labels=point_labels, labels=labels)


def corrective_prompts(previous: Prompts, predicted: np.ndarray, masks: np.ndarray, mask_logits: np.ndarray,
                       rng: np.random.Generator) -> Prompts:
    """The next round of interactive prompting: one more click per object, drawn uniformly from its
    error region (positive where the object was missed, negative where background was taken), plus
    the previous round's low-res mask logits as the mask prompt. An object without error gets a
    positive click inside it.

    Args:
        previous: the prompts of the round before (boxes kept, clicks extended).
        predicted: ``(N, H, W)`` bool, that round's masks at the slice size.
        masks: ``(N, H, W)`` bool ground truth.
        mask_logits: ``(N, 1, h, w)`` that round's low-res logits (detached).
    """
    clicks = np.zeros((len(masks), 1, 2), np.float32)
    click_labels = np.zeros((len(masks), 1), np.int64)
    for i, (pred, truth) in enumerate(zip(predicted, masks)):
        error = pred ^ truth
        region = error if error.any() else truth
        clicks[i] = _pick(region, 1, rng)
        x, y = clicks[i, 0].astype(int)
        click_labels[i, 0] = int(truth[y, x])
    if previous.points is not None:
        clicks = np.concatenate([previous.points, clicks], axis=1)
        click_labels = np.concatenate([previous.point_labels, click_labels], axis=1)
    return Prompts(boxes=previous.boxes, points=clicks, point_labels=click_labels,
                   masks=np.asarray(mask_logits, np.float32), labels=previous.labels)


def text_queries(masks: np.ndarray, labels: np.ndarray, classes: Sequence[TextClass],
                 rng: np.random.Generator) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Text prompts for one slice: one query per class, the class's whole region as its target.

    Every class with an object in the slice is asked for; where the liver is present, the classes
    absent from the slice are asked for too, with an empty target (a tumour-free liver slice teaches
    "liver tumor" -> nothing). Each query's text is one of its class's descriptions, drawn uniformly.

    Args:
        masks: ``(N, H, W)`` bool objects of the slice; labels: ``(N,)`` their classes.
        classes: the text projection's classes (`samliver.prompts.clip_text.TextClass`).
    Returns:
        ``(targets (Q, H, W) bool, texts (Q,), labels (Q,) uint8)``; Q may be 0.
    """
    present = set(int(v) for v in labels)
    liver_present = LIVER in present
    targets, texts, out_labels = [], [], []
    for cls in classes:
        if cls.label in present or liver_present:
            targets.append(masks[labels == cls.label].any(axis=0))
            texts.append(cls.descriptions[int(rng.integers(len(cls.descriptions)))])
            out_labels.append(cls.label)
    if not targets:
        return np.zeros((0, *masks.shape[-2:]), bool), [], np.zeros(0, np.uint8)
    return np.stack(targets), texts, np.asarray(out_labels, np.uint8)


def choose_objects(count: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``limit`` of ``count`` objects: all of them, or a random subset in order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(rng.choice(count, size=limit, replace=False))
