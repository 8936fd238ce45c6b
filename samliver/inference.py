"""Shared inference steps: encoding a volume's slices once (batched, cached) and decoding
one slice's objects into masks. Used by `Predictor` and by box propagation."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from samliver.models.base import ImageEmbedding, PromptableSegmenter
from samliver.prompts import Prompts


@dataclass
class Prediction:
    """Masks for N objects of one slice.

    Attributes:
        masks: ``(N, H, W)`` bool.
        scores: ``(N,)`` predicted IoU of each mask.
        logits: ``(N, H, W)`` float32 mask logits at the slice size (threshold 0).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


def decode_objects(model: PromptableSegmenter, embedding: ImageEmbedding, prompts: Prompts,
                   image_size: tuple[int, int], multimask: bool = False) -> Prediction:
    """Decode all N objects of one slice in one batch; with ``multimask`` keep each object's
    highest-scoring mask."""
    with torch.no_grad():
        out = model.decode(embedding, prompts, image_size, multimask=multimask)
        best = out.iou_scores.argmax(dim=1)
        pick = torch.arange(best.shape[0], device=best.device)
        low_res = out.low_res_logits[pick, best][:, None]
        logits = model.postprocess(low_res, image_size)[:, 0]
        scores = out.iou_scores[pick, best]
    logits = logits.float().cpu().numpy()
    return Prediction(masks=logits > model.mask_threshold, scores=scores.float().cpu().numpy(), logits=logits)


def paint(label_map: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> None:
    """Write object masks ``(N, H, W)`` into ``label_map`` ``(H, W)`` in place; the higher label wins."""
    for mask, label in zip(masks, labels):
        np.maximum(label_map, np.where(mask, np.uint8(label), np.uint8(0)), out=label_map)


class SliceEncoder:
    """Encodes slices of one HU volume ``(Z, H, W)`` in batches and keeps a bounded LRU cache.

    The cache key is a digest of the slice's HU values and the window, so a repeated slice
    (or a second call on the same volume) is never encoded twice while it is cached.
    """

    def __init__(self, model: PromptableSegmenter, batch_size: int = 4, cache_size: int = 64) -> None:
        if batch_size < 1 or cache_size < 1:
            raise ValueError(f"batch_size and cache_size must be >= 1, got {batch_size}, {cache_size}")
        self.model = model
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, ImageEmbedding] = OrderedDict()

    @staticmethod
    def _key(hu_2d: np.ndarray, window: tuple[float, float] | None) -> tuple:
        data = np.ascontiguousarray(hu_2d, dtype=np.float32)
        return hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest(), data.shape, window

    def encode(self, hu_volume: np.ndarray, slices: Iterable[int],
               window: tuple[float, float] | None = None) -> dict[int, ImageEmbedding]:
        """Embeddings of ``hu_volume[z]`` for each ``z`` in ``slices`` (each batch-1)."""
        wanted = list(dict.fromkeys(int(z) for z in slices))
        keys = {z: self._key(hu_volume[z], window) for z in wanted}
        todo = [z for z in wanted if keys[z] not in self._cache]
        fresh: dict[int, ImageEmbedding] = {}
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            with torch.no_grad():
                emb = self.model.encode(self.model.preprocess(np.stack([hu_volume[z] for z in batch]), window))
            fresh.update({z: emb.select(i) for i, z in enumerate(batch)})
        out = {}
        for z in wanted:
            if z in fresh:
                self._cache[keys[z]] = fresh[z]
            else:
                self._cache.move_to_end(keys[z])
            out[z] = self._cache[keys[z]]
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out
