"""`Predictor`: prompted segmentation of slices and CT volumes with any `PromptableSegmenter`."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from samliver.errors import PromptError
from samliver.inference import Prediction, SliceEncoder, decode_objects, paint
from samliver.models.base import ImageEmbedding, PromptableSegmenter
from samliver.prompts import Prompts
from samliver.prompts.clip_text import text_tokens


def _hu_array(volume) -> np.ndarray:
    """``(Z, H, W)`` float32 HU from a `CTVolume` or an array."""
    array = np.asarray(getattr(volume, "array", volume), dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"volume: expected (Z, H, W) HU, got shape {array.shape}")
    return array


def _batched(value, ndim: int):
    """Add a leading object axis to a single prompt (e.g. a box ``(4,)`` -> ``(1, 4)``)."""
    if value is None:
        return None
    arr = np.asarray(value)
    return arr[None] if arr.ndim == ndim - 1 else arr


class Predictor:
    """Stateful prompted segmentation, as ``SamPredictor``: `set_image` once, `predict` many times.

    Args:
        model: any `PromptableSegmenter` (see `samliver.load_model`).
        batch_size: slices encoded per encoder call in volume methods.
        cache_size: slice embeddings kept (LRU) between calls.
        precision: the image encoder's precision, ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast,
            GPU; see `samliver.speed`); decoding stays fp32.
    """

    def __init__(self, model: PromptableSegmenter, batch_size: int = 4, cache_size: int = 64,
                 precision: str | None = None) -> None:
        self.model = model.eval()
        self.encoder = SliceEncoder(model, batch_size=batch_size, cache_size=cache_size, precision=precision)
        self._embedding: ImageEmbedding | None = None
        self._image_size: tuple[int, int] | None = None

    def set_image(self, hu_2d: np.ndarray, window: tuple[float, float] | None = None) -> None:
        """Encode one axial slice ``(H, W)`` in HU; ``window`` ``(lo, hi)`` HU overrides the model's default."""
        hu = np.asarray(hu_2d, dtype=np.float32)
        if hu.ndim != 2:
            raise ValueError(f"set_image: expected one (H, W) slice in HU, got shape {hu.shape}")
        self._embedding = self.encoder.encode(hu[None], [0], window)[0]
        self._image_size = hu.shape

    def predict(self, box: Sequence | np.ndarray | None = None, points: Sequence | np.ndarray | None = None,
                point_labels: Sequence | np.ndarray | None = None, mask_input: np.ndarray | None = None,
                text: str | Sequence[str] | None = None, multimask: bool = False,
                labels: Sequence[int] | None = None) -> Prediction:
        """Masks for the current slice.

        Args:
            box: ``(4,)`` or ``(N, 4)`` xyxy pixels; N boxes decode as one batch.
            points: ``(K, 2)`` or ``(N, K, 2)`` ``(x, y)`` pixels; ``point_labels`` ``(K,)`` / ``(N, K)``.
            mask_input: ``(1, h, w)`` or ``(N, 1, h, w)`` low-res logits (e.g. a previous ``Prediction``'s).
            text: a description ("liver tumor") or N of them, one object each, through the model's trained
                text projection (`samliver.prompts.clip_text`); ``labels`` default to the class each text
                describes (else 1). With boxes/points, give one text per object.
            multimask: let the decoder propose 3 masks per object and keep the best-scoring one.
        Returns:
            `Prediction` with ``masks (N, H, W)`` bool, ``scores (N,)``, ``logits (N, H, W)``.
        """
        if self._embedding is None:
            raise RuntimeError("call set_image(...) before predict(...)")
        tokens = None
        if text is not None:  # PromptError when the model has no trained text projection
            tokens, text_labels = text_tokens(self.model, text)
            labels = text_labels if labels is None else labels
        prompts = Prompts(boxes=_batched(box, 2), points=_batched(points, 3), point_labels=_batched(point_labels, 2),
                          masks=_batched(mask_input, 4), tokens=tokens, labels=labels)
        return self.predict_prompts(prompts, multimask=multimask)

    def predict_prompts(self, prompts: Prompts, multimask: bool = False) -> Prediction:
        """`predict` with a ready `Prompts` batch for the current slice."""
        if self._embedding is None:
            raise RuntimeError("call set_image(...) before predict(...)")
        prompts = prompts.check_inside(*self._image_size)
        return decode_objects(self.model, self._embedding, prompts, self._image_size, multimask)

    def segment_volume(self, volume, prompts: Mapping[int, Prompts | Sequence[Prompts]],
                       window: tuple[float, float] | None = None) -> np.ndarray:
        """Segment a CT from per-slice prompts; only prompted slices are encoded.

        Args:
            volume: a `CTVolume` or a ``(Z, H, W)`` HU array (canonical orientation).
            prompts: slice index -> that slice's `Prompts` (or a list of batches, e.g. box
                objects and point objects on the same slice).
        Returns:
            ``(Z, H, W)`` uint8: each object painted with its label; the higher label wins on overlap.
        """
        hu = _hu_array(volume)
        depth, height, width = hu.shape
        batches: dict[int, list[Prompts]] = {}
        for z, value in prompts.items():
            if not (isinstance(z, (int, np.integer)) and 0 <= z < depth):
                raise PromptError(f"prompts: slice {z!r} outside the volume's {depth} slices")
            group = [value] if isinstance(value, Prompts) else list(value)
            batches[int(z)] = [p.check_inside(height, width) for p in group]
        out = np.zeros(hu.shape, np.uint8)
        order = sorted(batches)
        step = self.encoder.batch_size
        for start in range(0, len(order), step):
            embeddings = self.encoder.encode(hu, order[start:start + step], window)
            for z, emb in embeddings.items():
                for group in batches[z]:
                    paint(out[z], decode_objects(self.model, emb, group, (height, width)).masks, group.labels)
        return out

    def segment_auto(self, volume, box_generator=None, cleanup: bool = True,
                     window: tuple[float, float] | None = None,
                     spacing: tuple[float, float, float] | None = None) -> np.ndarray:
        """Segment a whole CT with no prompts given (see `samliver.auto`).

        A box generator (``box_generator``, else the model's registered default, e.g. the
        bundled U-Net for ``samliver_tiny``) proposes liver and tumour boxes; the model refines
        each (only the prompted slices are encoded); tumour components that touch no liver are
        dropped. A model with a prompt-free head and no ``box_generator`` uses its head
        (`segment_head`) instead.

        Args:
            volume: a `CTVolume` or a ``(Z, H, W)`` HU array (canonical orientation).
            box_generator: ``(hu, spacing) -> {slice: Prompts}`` (`samliver.prompts.generators.BoxGenerator`).
            cleanup: 3D cleanup (`samliver.cleanup.cleanup_labels`): the largest liver component,
                holes filled, tumour components that touch no liver voxel dropped.
            window: ``(lo, hi)`` HU, overriding the model's default CT window.
            spacing: ``(z, y, x)`` mm for a bare array (a `CTVolume` carries its own).
        Returns:
            ``(Z, H, W)`` uint8: 0 background, 1 liver, 2 tumour.
        Raises:
            NoTaskHeadError: neither a prompt-free head nor a box generator (default or given).
            BoxGeneratorError: the generator returned something other than ``{slice: Prompts}``.
        """
        from samliver.auto import segment_auto

        return segment_auto(self, volume, box_generator, cleanup, window, spacing)

    def segment_head(self, volume, window: tuple[float, float] | None = None) -> np.ndarray:
        """Segment a whole CT with no prompts, through the model's prompt-free head.

        Every slice is encoded (in batches, through the embedding cache), the head gives
        ``(B, K, h, w)`` class logits, ``model.postprocess`` brings them to the slice size and
        the argmax is the label.

        Args:
            volume: a `CTVolume` or a ``(Z, H, W)`` HU array (canonical orientation).
            window: ``(lo, hi)`` HU, overriding the model's default CT window.
        Returns:
            ``(Z, H, W)`` uint8 classes (0 background, 1 liver, 2 tumour for the default 3-class head).
        Raises:
            NoTaskHeadError: the model has no prompt-free head (``decoder`` adapter with ``head: multiclass``).
        """
        import torch

        from samliver.adapters.task_head import require_task_head

        head = require_task_head(self.model)
        hu = _hu_array(volume)
        depth, height, width = hu.shape
        out = np.zeros(hu.shape, np.uint8)
        step = self.encoder.batch_size
        for start in range(0, depth, step):
            zs = list(range(start, min(start + step, depth)))
            embeddings = self.encoder.encode(hu, zs, window)
            with torch.no_grad():
                logits = head(ImageEmbedding.cat([embeddings[z] for z in zs]))
                logits = self.model.postprocess(logits, (height, width))
            out[start:start + len(zs)] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        return out

    def propagate_volume(self, volume, key_slice: int, prompts: Prompts,
                         window: tuple[float, float] | None = None) -> np.ndarray:
        """3D segmentation from the objects prompted on ``key_slice``.

        SAM 2 models track them with their video memory; SAM/MedSAM propagate boxes slice
        to slice in both directions until each object vanishes. Returns ``(Z, H, W)`` uint8.
        """
        hu = _hu_array(volume)
        if not (isinstance(key_slice, (int, np.integer)) and 0 <= key_slice < hu.shape[0]):
            raise PromptError(f"key_slice: {key_slice!r} outside the volume's {hu.shape[0]} slices")
        return self.model.propagate(hu, int(key_slice), prompts.check_inside(*hu.shape[1:]), window)
