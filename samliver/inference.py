"""Shared inference steps: encoding a volume's slices once (batched, cached) and decoding
one slice's objects into masks. Used by `Predictor` and by box propagation."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from samliver.models.base import ImageEmbedding, PromptableSegmenter
from samliver.prompts import Prompts
from samliver.speed import check_precision, encoder_autocast


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


def _float32(embedding: ImageEmbedding) -> ImageEmbedding:
    """The embedding in float32 (after a mixed-precision encoder), so decoding runs as in fp32."""
    hi = None if embedding.high_res_features is None else tuple(f.float() for f in embedding.high_res_features)
    return ImageEmbedding(embedding.image_embeddings.float(), hi)


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

    Running out of GPU memory (``torch.OutOfMemoryError`` from an encoder call) does not fail the
    volume: the batch is halved (down to one slice; only a single slice that does not fit raises),
    CUDA's cached blocks are released, the smaller ``batch_size`` is kept for later calls, and a
    `RuntimeWarning` says so once per encoder.
    """

    def __init__(self, model: PromptableSegmenter, batch_size: int = 4, cache_size: int = 64,
                 precision: str | None = None) -> None:
        if batch_size < 1 or cache_size < 1:
            raise ValueError(f"batch_size and cache_size must be >= 1, got {batch_size}, {cache_size}")
        self.model = model
        self.batch_size = batch_size
        self.cache_size = cache_size
        #: encoder precision (`samliver.speed`): "fp32", or "bf16"/"fp16" autocast; embeddings are kept in fp32
        self.precision = check_precision(precision)
        self._cache: OrderedDict[tuple, ImageEmbedding] = OrderedDict()
        self._warned_oom = False

    def _inputs(self, hu_volume: np.ndarray, batch: list[int], depth: int,
                window: tuple[float, float] | None) -> torch.Tensor:
        """Model pixels of one encoder call: ``(len(batch), 3, S, S)``, or ``(len(batch) * D, 3, S, S)``
        stack after stack for ``depth`` D > 1 (each distinct slice preprocessed once)."""
        with torch.no_grad():
            if depth == 1:
                return self.model.preprocess(np.stack([hu_volume[z] for z in batch]), window)
            order = np.concatenate([stack_indices(z, hu_volume.shape[0], depth) for z in batch])
            distinct, position = np.unique(order, return_inverse=True)
            pixels = self.model.preprocess(hu_volume[distinct], window)
            return pixels[torch.as_tensor(position.reshape(-1), device=pixels.device)]

    def _encode_batch(self, pixels: torch.Tensor, batch: list[int], depth: int) -> dict[int, ImageEmbedding]:
        """One encoder call on `_inputs`' pixels: the embeddings of slices ``batch`` (the stack centres for D > 1)."""
        with torch.no_grad(), encoder_autocast(pixels.device, self.precision):
            emb = self.model.encode(pixels)
        if self.precision != "fp32":
            emb = _float32(emb)
        if depth == 1:
            # Owned copies: a cached view would keep its whole batch's storage alive past eviction.
            return {z: _owned(emb.select(i)) if len(batch) > 1 else emb for i, z in enumerate(batch)}
        return {z: _owned(emb.select(i * depth + depth // 2)) for i, z in enumerate(batch)}

    def _shrink_batch(self, failed: int) -> None:
        """After running out of GPU memory on ``failed`` slices at once: halve the batch size for this
        and every later call, release the allocator's cached blocks, and warn (once per encoder)."""
        self.batch_size = max(1, failed // 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if not self._warned_oom:
            self._warned_oom = True
            warnings.warn(f"out of GPU memory encoding {failed} slices at once; continuing with batches of "
                          f"{self.batch_size}", RuntimeWarning, stacklevel=4)

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
        # Taken now: inserting this call's fresh embeddings may evict them before they are returned.
        hits = {z: self._cache[keys[z]] for z in wanted if keys[z] in self._cache}
        fresh: dict[int, ImageEmbedding] = {}
        # On a GPU the next batch is preprocessed (CPU work, then the copy) in a thread while this one
        # encodes; on the CPU both would compete for the same cores.
        prefetch = self.model.device.type != "cpu" and len(todo) > self.batch_size
        with ThreadPoolExecutor(1) if prefetch else contextlib.nullcontext() as pool:
            pending: tuple[tuple[int, ...], Future] | None = None
            start = 0
            while start < len(todo):
                batch = todo[start:start + self.batch_size]
                if pending is not None and pending[0] == tuple(batch):
                    pixels = pending[1].result()
                else:  # nothing prefetched, or for a batch size that has since shrunk
                    pixels = self._inputs(hu_volume, batch, depth, window)
                following = todo[start + len(batch):start + 2 * len(batch)]
                pending = None
                if pool is not None and following:
                    pending = (tuple(following), pool.submit(self._inputs, hu_volume, following, depth, window))
                try:
                    fresh.update(self._encode_batch(pixels, batch, depth))
                    out_of_memory = False
                except torch.OutOfMemoryError:
                    if len(batch) == 1:
                        raise
                    out_of_memory = True
                del pixels
                if out_of_memory:  # outside the except block, so the failed call's tensors are already freed
                    pending = None
                    self._shrink_batch(len(batch))
                    continue
                start += len(batch)
        out = {}
        for z in wanted:
            out[z] = fresh[z] if z in fresh else hits[z]
            self._cache[keys[z]] = out[z]
            self._cache.move_to_end(keys[z])
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out
