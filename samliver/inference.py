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
        low_res_logits: ``(N, 1, h, w)`` float32 logits at the model's low-res size, ready to
            feed back as ``mask_input`` (iterative clicks).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    low_res_logits: np.ndarray | None = None


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
    return Prediction(masks=logits > model.mask_threshold, scores=scores.float().cpu().numpy(), logits=logits,
                      low_res_logits=low_res.float().cpu().numpy())


def paint(label_map: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> None:
    """Write object masks ``(N, H, W)`` into ``label_map`` ``(H, W)`` in place; the higher label wins."""
    for mask, label in zip(masks, labels):
        np.maximum(label_map, np.where(mask, np.uint8(label), np.uint8(0)), out=label_map)


def stack_depth(model: PromptableSegmenter) -> int:
    """Slices D the model's encoder sees per stack (``model.stack_depth``, set by the ``depth3d``
    strategy); 1 for a plain 2D model."""
    return int(getattr(model, "stack_depth", 1))


def stack_indices(z: int, n_slices: int, depth: int) -> np.ndarray:
    """Slice indices ``(depth,)`` of the stack centred on slice ``z`` of a volume of ``n_slices``.

    The stack is ``z - depth//2 .. z + depth//2``; indices beyond the volume are clamped to its
    first or last slice (the edge slice is repeated), e.g. ``stack_indices(0, 10, 5) = [0, 0, 0, 1, 2]``.
    Training stacks and inference use this one rule.

    Raises:
        ValueError: ``depth`` is not a positive odd number, or ``z`` is outside the volume.
    """
    if depth < 1 or depth % 2 == 0:
        raise ValueError(f"stack depth: need an odd number >= 1, got {depth}")
    if not 0 <= z < n_slices:
        raise ValueError(f"slice {z} outside the volume's {n_slices} slices")
    half = depth // 2
    return np.clip(np.arange(z - half, z + half + 1), 0, n_slices - 1)


def _owned(embedding: ImageEmbedding) -> ImageEmbedding:
    """A copy that does not keep its batch's storage alive (a cached view would)."""
    hi = None if embedding.high_res_features is None else tuple(f.clone() for f in embedding.high_res_features)
    return ImageEmbedding(embedding.image_embeddings.clone(), hi)


class SliceEncoder:
    """Encodes slices of one HU volume ``(Z, H, W)`` in batches and keeps a bounded LRU cache.

    The cache key is a digest of the slice's HU values and the window, so a repeated slice
    (or a second call on the same volume) is never encoded twice while it is cached.

    Models that see slice stacks (``model.stack_depth`` = D > 1, the ``depth3d`` strategy):
    slice ``z`` is encoded in the centre of its own stack ``stack_indices(z, Z, D)`` (edge slices
    repeated at the volume's ends; a lone slice, as `Predictor.set_image` gives, is a stack of D
    copies of itself), and its embedding is the stack's centre one. Each wanted slice costs a
    full stack, i.e. D encoder images (neighbouring slices' stacks overlap but are centred
    differently, so nothing is shared); one encoder call takes ``batch_size`` stacks
    (``batch_size * D`` images). The cache key is then the digests of the whole stack and the window.
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
        """Embeddings of ``hu_volume[z]`` for each ``z`` in ``slices`` (each batch-1); for a stack
        model, each in the centre of its own stack (see the class docstring)."""
        depth = stack_depth(self.model)
        wanted = list(dict.fromkeys(int(z) for z in slices))
        if depth == 1:
            keys = {z: self._key(hu_volume[z], window) for z in wanted}
        else:
            stacks = {z: stack_indices(z, hu_volume.shape[0], depth) for z in wanted}
            digests: dict[int, tuple] = {}
            for z in wanted:
                for i in stacks[z]:
                    if i not in digests:
                        digests[i] = self._key(hu_volume[i], window)
            keys = {z: (tuple(digests[i][0] for i in stacks[z]), digests[z][1], window) for z in wanted}
        todo = [z for z in wanted if keys[z] not in self._cache]
        fresh: dict[int, ImageEmbedding] = {}
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            if depth == 1:
                with torch.no_grad():
                    emb = self.model.encode(self.model.preprocess(np.stack([hu_volume[z] for z in batch]), window))
                fresh.update({z: emb.select(i) for i, z in enumerate(batch)})
                continue
            # Stack after stack: (len(batch) * D) images; each distinct slice is preprocessed once.
            order = np.concatenate([stacks[z] for z in batch])
            distinct, position = np.unique(order, return_inverse=True)
            with torch.no_grad():
                pixels = self.model.preprocess(hu_volume[distinct], window)
                emb = self.model.encode(pixels[torch.as_tensor(position.reshape(-1), device=pixels.device)])
            fresh.update({z: _owned(emb.select(i * depth + depth // 2)) for i, z in enumerate(batch)})
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
