"""`Prompts`: one batch of prompts for one axial slice (N objects)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from samliver.errors import PromptError


def _as_float_array(name: str, value, ndim: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{name}: not numeric ({exc})") from None
    if arr.ndim != ndim:
        raise PromptError(f"{name}: expected {ndim} dimensions, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PromptError(f"{name}: contains NaN or infinite values")
    return arr


@dataclass(frozen=True)
class Prompts:
    """Prompts for N objects of one slice, in that slice's pixel coordinates.

    Attributes:
        boxes: ``(N, 4)`` float32 ``x0, y0, x1, y1`` in pixels (x = column, y = row), or None.
        points: ``(N, K, 2)`` float32 ``(x, y)`` pixels, or None.
        point_labels: ``(N, K)`` int64, 1 foreground / 0 background; required with ``points``.
        masks: ``(N, 1, h, w)`` float32 low-res mask logits at the model's low-res size, or None.
        tokens: ``(N, T, C)`` float32 extra sparse tokens for the mask decoder (text prompts), or None;
            a ``torch.Tensor`` is kept as it is (training a text projection through the decoder).
        labels: ``(N,)`` uint8 class each object is written with (1 liver, 2 tumour); default 1.
    """

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    tokens: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = _as_float_array("boxes", self.boxes, 2)
        points = _as_float_array("points", self.points, 3)
        masks = _as_float_array("masks", self.masks, 4)
        tokens = self.tokens
        if isinstance(tokens, torch.Tensor):  # kept as a tensor, so a text projection's gradients flow
            if tokens.ndim != 3 or not torch.isfinite(tokens).all():
                raise PromptError(f"tokens: expected finite (N, T, C), got shape {tuple(tokens.shape)}")
        else:
            tokens = _as_float_array("tokens", tokens, 3)
        counts = {k: v.shape[0] for k, v in
                  (("boxes", boxes), ("points", points), ("masks", masks), ("tokens", tokens)) if v is not None}
        if not counts:
            raise PromptError("prompts: need at least one of boxes, points, masks or tokens")
        if len(set(counts.values())) > 1:
            raise PromptError(f"prompts: object counts differ between fields: {counts}")
        n = next(iter(counts.values()))
        if boxes is not None:
            if boxes.shape[1] != 4:
                raise PromptError(f"boxes: expected shape (N, 4), got {boxes.shape}")
            bad = np.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
            if bad.size:
                raise PromptError(f"boxes[{bad[0]}]: need x0 < x1 and y0 < y1, got {boxes[bad[0]].tolist()}")
        point_labels = None
        if points is not None:
            if points.shape[2] != 2:
                raise PromptError(f"points: expected shape (N, K, 2), got {points.shape}")
            if self.point_labels is None:
                raise PromptError("point_labels: required when points are given")
            point_labels = np.asarray(self.point_labels)
            if point_labels.shape != points.shape[:2]:
                raise PromptError(f"point_labels: expected shape {points.shape[:2]}, got {point_labels.shape}")
            if not np.isin(point_labels, (0, 1)).all():
                raise PromptError("point_labels: values must be 1 (foreground) or 0 (background)")
            point_labels = point_labels.astype(np.int64)
        elif self.point_labels is not None:
            raise PromptError("point_labels: given without points")
        if masks is not None and masks.shape[1] != 1:
            raise PromptError(f"masks: expected shape (N, 1, h, w), got {masks.shape}")
        labels = np.ones(n, np.uint8) if self.labels is None else np.asarray(self.labels)
        if labels.shape != (n,):
            raise PromptError(f"labels: expected shape ({n},), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or (labels < 1).any() or (labels > 255).any():
            raise PromptError(f"labels: must be integers in 1..255, got {labels.tolist()}")
        for name, value in (("boxes", boxes), ("points", points), ("point_labels", point_labels),
                            ("masks", masks), ("tokens", tokens), ("labels", labels.astype(np.uint8))):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check_inside(self, height: int, width: int) -> "Prompts":
        """Validate against an ``(height, width)`` slice and clip boxes to it.

        A box must overlap the image; after clipping it must still have x0 < x1, y0 < y1.
        Points must lie inside ``[0, width] x [0, height]``. Returns the clipped prompts.
        """
        boxes = self.boxes
        if boxes is not None:
            outside = np.nonzero((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
                                 | (boxes[:, 0] >= width) | (boxes[:, 1] >= height))[0]
            if outside.size:
                raise PromptError(f"boxes[{outside[0]}]: {boxes[outside[0]].tolist()} lies outside "
                                  f"the {width}x{height} (width x height) image")
            boxes = np.stack([boxes[:, 0].clip(0, width), boxes[:, 1].clip(0, height),
                              boxes[:, 2].clip(0, width), boxes[:, 3].clip(0, height)], axis=1)
        if self.points is not None:
            pts = self.points
            bad = np.nonzero(((pts[..., 0] < 0) | (pts[..., 0] > width)
                              | (pts[..., 1] < 0) | (pts[..., 1] > height)).any(axis=1))[0]
            if bad.size:
                raise PromptError(f"points[{bad[0]}]: {pts[bad[0]].tolist()} outside the "
                                  f"{width}x{height} (width x height) image")
        return replace(self, boxes=boxes) if boxes is not self.boxes else self

    def select(self, index) -> "Prompts":
        """The prompts of the objects at ``index`` (an int array, slice or boolean mask)."""
        pick = (lambda a: None if a is None else a[index])
        return Prompts(boxes=pick(self.boxes), points=pick(self.points), point_labels=pick(self.point_labels),
                       masks=pick(self.masks), tokens=pick(self.tokens), labels=pick(self.labels))
