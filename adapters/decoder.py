"""``decoder``: a frozen image encoder with a trained decoder, and precomputed embeddings.

Two heads (``DecoderConfig.head``):

- ``"sam"``: the model's own promptable mask decoder trains (less what ``encode`` itself uses:
  SAM 2's ``conv_s0``/``conv_s1`` project the encoder's features, so they stay frozen with it).
- ``"multiclass"``: a new prompt-free `MulticlassHead` (``model.task_head``) maps the frozen
  features to background/liver/tumour logits; the mask decoder and prompt encoder stay frozen
  and unused. Such a model segments a whole CT with ``Predictor.segment_auto(ct)``.

In both, every parameter ``encode`` depends on is frozen and the image encoder is held in eval
mode (``model.train()`` leaves it in eval), so a slice's embedding never changes during training
and can be computed once. How a trainer uses that::

    apply_strategy(model, "decoder", {"head": "multiclass"})
    if encoder_frozen(model):                       # true for this strategy, false for full / LoRA
        store = precompute_embeddings(model, slice_dataset, batch_size=16)   # once, before epoch 1
        loader = DataLoader(EmbeddingDataset(store), batch_size=8, shuffle=True,
                            collate_fn=collate_embeddings)
    for batch in loader:                            # the encoder never runs here
        logits = model.task_head(batch["embedding"].to(device))        # (B, K, S/4, S/4)
        logits = model.postprocess(logits, tuple(batch["label"].shape[-2:]))
        loss = DiceCELoss(to_onehot_y=True, softmax=True)(logits, batch["label"][:, None])

With ``head: sam`` the loop calls ``model.decode(store.embedding(i), prompts, image_size)`` instead.
Precomputing fixes the input images: image augmentation (``SliceDataset(augment=...)``) would
need one store per augmented copy, so trainers precompute un-augmented slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from samliver.models.base import ImageEmbedding

from .base import AdapterError, Strategy, StrategyConfig, freeze, register_strategy
from .task_head import MulticlassHead, hold_eval, probe_encode, submodule

HEADS = ("sam", "multiclass")


@dataclass
class DecoderConfig(StrategyConfig):
    """Config of the ``decoder`` strategy.

    Attributes:
        head: ``"sam"`` (fine-tune the model's promptable mask decoder) or ``"multiclass"``
            (replace it by a prompt-free `MulticlassHead`).
        num_classes: classes of the multiclass head (3: background, liver, tumour).
        head_channels: width of the multiclass head.
        use_high_res: multiclass head only: add the encoder's high-resolution feature maps
            (SAM 2) while upsampling; None uses them where the encoder gives them.
    """

    head: str = "sam"
    num_classes: int = 3
    head_channels: int = 64
    use_high_res: bool | None = None

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise AdapterError(f"decoder head {self.head!r} is unknown; choose one of {', '.join(HEADS)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or not 2 <= self.num_classes <= 255:
            raise AdapterError(f"decoder num_classes must be an integer in 2..255, got {self.num_classes!r}")
        if isinstance(self.head_channels, bool) or not isinstance(self.head_channels, int) or self.head_channels < 1:
            raise AdapterError(f"decoder head_channels must be a positive integer, got {self.head_channels!r}")
        if self.use_high_res not in (None, True, False):
            raise AdapterError(f"decoder use_high_res must be true, false or null, got {self.use_high_res!r}")


@register_strategy
class DecoderStrategy(Strategy):
    """Freeze the whole ``encode`` path; train SAM's mask decoder or a new multi-class head."""

    name = "decoder"
    config_class = DecoderConfig

    def attaches_task_head(self, config: DecoderConfig) -> bool:
        return config.head == "multiclass"

    def apply(self, model: nn.Module, config: DecoderConfig) -> nn.Module:
        """Freeze every parameter ``encode`` depends on and hold the image encoder in eval mode
        (``model.train()`` leaves it there); then unfreeze the mask decoder (``head: sam``) or attach
        a new trainable ``model.task_head`` (``head: multiclass``). The model is left untouched
        where the combination cannot work (AdapterError)."""
        encoder, decoder = submodule(model, "image_encoder"), submodule(model, "mask_decoder")
        if getattr(model, "task_head", None) is not None:
            raise AdapterError(f"{model.spec.name} already has a task head; apply the decoder strategy to a bare model")
        probe = probe_encode(model)
        if config.head == "multiclass":
            param = next(model.parameters())
            head = MulticlassHead.for_probe(probe, config.num_classes, config.head_channels, config.use_high_res)
            trained = list(head.to(device=param.device, dtype=param.dtype).parameters())
        else:
            head = None
            frozen = {id(p) for n, p in model.named_parameters() if n in probe.parameters}
            trained = [p for p in decoder.parameters() if id(p) not in frozen]
            if not trained:
                raise AdapterError(f"{model.spec.name}: every mask-decoder parameter is used by encode, "
                                   "so head: sam has nothing to train; use head: multiclass")
        freeze(model)
        hold_eval(encoder)
        if head is not None:
            model.task_head = head
        for p in trained:
            p.requires_grad_(True)
        return model


def encoder_frozen(model: nn.Module) -> bool:
    """Whether no parameter that ``model.encode`` depends on trains, so embeddings can be precomputed."""
    used = probe_encode(model).parameters
    return not any(p.requires_grad for n, p in model.named_parameters() if n in used)


@dataclass
class EmbeddingStore:
    """Embeddings of N slices, computed once (see `precompute_embeddings`).

    Attributes:
        image_embeddings: ``(N, C, h, w)``.
        high_res_features: ``((N, C_i, h_i, w_i), ...)`` (SAM 2) or None.
        image_sizes: ``(N, 2)`` int64: each slice's ``(H, W)``, for ``model.postprocess``.
        labels: per slice a ``(H, W)`` uint8 label map, where the input items carried one; else None.
    """

    image_embeddings: torch.Tensor
    high_res_features: tuple[torch.Tensor, ...] | None
    image_sizes: torch.Tensor
    labels: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.image_embeddings.shape[0])

    def embedding(self, index: int | slice | Sequence[int] | torch.Tensor) -> ImageEmbedding:
        """The `ImageEmbedding` of slice(s) ``index`` (an int keeps a batch dimension of 1)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
        hi = None if self.high_res_features is None else tuple(f[index] for f in self.high_res_features)
        return ImageEmbedding(self.image_embeddings[index], hi)

    def save(self, path: str | Path) -> Path:
        """Write the store to one safetensors file (atomically)."""
        from safetensors.torch import save

        from samliver.atomic import write_bytes_atomic

        tensors = {"image_embeddings": self.image_embeddings.contiguous(), "image_sizes": self.image_sizes}
        for i, f in enumerate(self.high_res_features or ()):
            tensors[f"high_res_features.{i}"] = f.contiguous()
        for i, label in enumerate(self.labels or ()):
            tensors[f"labels.{i}"] = label.contiguous()
        path = Path(path)
        write_bytes_atomic(path, save({k: v.cpu() for k, v in tensors.items()}, metadata={"format": "pt"}))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "EmbeddingStore":
        """Read a store written by `save`."""
        from safetensors.torch import load_file

        t = load_file(str(path), device=str(device))
        hi = tuple(t[f"high_res_features.{i}"] for i in range(sum(k.startswith("high_res_features.") for k in t)))
        labels = [t[f"labels.{i}"] for i in range(sum(k.startswith("labels.") for k in t))]
        return cls(t["image_embeddings"], hi or None, t["image_sizes"], labels or None)


def _source(slices: Any) -> tuple[int, Any]:
    """``(N, item getter)`` for an array/tensor ``(N, H, W)`` or a sequence / Dataset of items;
    items are fetched one by one, so a large dataset is never held in memory at once."""
    if isinstance(slices, (np.ndarray, torch.Tensor)):
        if slices.ndim == 2:
            slices = slices[None]
        if slices.ndim != 3:
            raise ValueError(f"precompute_embeddings: expected HU slices (N, H, W), got shape {tuple(slices.shape)}")
    return len(slices), slices.__getitem__


def _image(item: Any, index: int) -> torch.Tensor | np.ndarray:
    """One item's 2D image: ``item["image"]`` (windowed, ``(1, H, W)`` or ``(H, W)``) or the HU slice itself."""
    image = item["image"] if isinstance(item, Mapping) else item
    if image.ndim == 3 and isinstance(item, Mapping):
        if image.shape[0] != 1:
            raise ValueError(f"precompute_embeddings: item {index} is a stack of {image.shape[0]} slices; "
                             "precomputed embeddings are per 2D slice (stack_depth 1)")
        image = image[0]
    if image.ndim != 2:
        raise ValueError(f"precompute_embeddings: item {index} has shape {tuple(image.shape)}, expected (H, W)")
    return image


def _pixels(model: nn.Module, images: list, windowed: bool, window: tuple[float, float] | None) -> torch.Tensor:
    """Model pixels ``(B, 3, S, S)`` of B same-size images: windowed ``[0, 1]`` ones through the
    data pipeline's `model_pixels`, HU ones through ``model.preprocess``."""
    if windowed:
        from samliver.data.intensity import model_pixels

        return model_pixels(model, torch.stack([torch.as_tensor(im, dtype=torch.float32) for im in images]))
    hu = np.stack([im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im) for im in images])
    return model.preprocess(hu.astype(np.float32), window)


def precompute_embeddings(model: nn.Module, slices: Any, batch_size: int = 8,
                          window: tuple[float, float] | None = None, device: str | torch.device = "cpu",
                          dtype: torch.dtype | None = None, keep_high_res: bool = True) -> EmbeddingStore:
    """Encode every slice once, for training with a frozen encoder.

    Args:
        model: a `PromptableSegmenter`, bare or with an adapter that leaves ``encode`` frozen.
        slices: HU slices ``(N, H, W)`` (array or tensor), a sequence of ``(H, W)`` HU arrays, or a
            sequence / Dataset of mappings with ``image`` — windowed grey values in ``[0, 1]``,
            ``(1, H, W)`` or ``(H, W)``, as `samliver.data.slices.SliceDataset` items (un-augmented) —
            and optionally ``label`` ``(H, W)`` (kept in the store). Consecutive items of one size
            and kind share a batch.
        batch_size: slices per encoder call.
        window: ``(lo, hi)`` HU for HU input (default the model's); windowed items are already windowed.
        device, dtype: where and how to keep the store (float16 halves its size; default: as encoded).
        keep_high_res: keep SAM 2's high-resolution maps (needed by ``head: sam`` and a high-res head).

    Returns:
        `EmbeddingStore` whose entry i equals ``model.encode(model.preprocess(slice_i))``.

    Raises:
        AdapterError: the model's adapter trains parameters that ``encode`` uses (embeddings would go stale).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if getattr(model, "adapter", None) and not encoder_frozen(model):
        raise AdapterError(f"precomputed embeddings would go stale: the {model.adapter['strategy']!r} adapter "
                           "trains parameters that encode uses; precompute only with a frozen encoder (decoder)")
    count, get = _source(slices)
    if count == 0:
        raise ValueError("precompute_embeddings: no slices given")
    parts: list[ImageEmbedding] = []
    sizes: list[tuple[int, int]] = []
    labels: list[torch.Tensor | None] = []
    images: list = []
    kind: tuple = ()

    def flush() -> None:
        with torch.no_grad():
            emb = model.encode(_pixels(model, images, kind[0], window))
        hi = emb.high_res_features if keep_high_res else None
        hi = None if hi is None else tuple(f.to(device=device, dtype=dtype) for f in hi)
        parts.append(ImageEmbedding(emb.image_embeddings.to(device=device, dtype=dtype), hi))
        sizes.extend([kind[1]] * len(images))
        images.clear()

    encoder = submodule(model, "image_encoder")
    was_training = encoder.training
    encoder.eval()
    try:
        for i in range(count):
            item = get(i)
            image = _image(item, i)
            key = (isinstance(item, Mapping), tuple(image.shape))
            if images and (key != kind or len(images) == batch_size):
                flush()
            kind = key
            images.append(image)
            label = item.get("label") if isinstance(item, Mapping) else None
            labels.append(None if label is None else torch.as_tensor(np.asarray(label), dtype=torch.uint8))
        flush()
    finally:
        encoder.train(was_training)
    whole = ImageEmbedding.cat(parts)
    kept = None if any(label is None for label in labels) else labels
    return EmbeddingStore(whole.image_embeddings, whole.high_res_features, torch.tensor(sizes, dtype=torch.long), kept)


class EmbeddingDataset(Dataset):
    """A torch Dataset over an `EmbeddingStore`: one slice's precomputed embedding (and label) per item.

    Args:
        store: from `precompute_embeddings`.
        labels: ``(N, H, W)`` label maps (or a sequence of ``(H, W)``); default ``store.labels``.

    Item ``i`` is a dict: ``image_embeddings`` ``(C, h, w)``; ``high_res_features`` (tuple of
    ``(C_i, h_i, w_i)``, only where the store has them); ``image_size`` ``(2,)``; ``index``;
    ``label`` ``(H, W)`` int64 where labels are known. Batch with `collate_embeddings`.
    """

    def __init__(self, store: EmbeddingStore, labels: Sequence | np.ndarray | torch.Tensor | None = None) -> None:
        self.store = store
        self.labels = store.labels if labels is None else labels
        if self.labels is not None and len(self.labels) != len(store):
            raise ValueError(f"labels: {len(self.labels)} label maps for {len(store)} embeddings")

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.store
        item: dict[str, Any] = {"image_embeddings": s.image_embeddings[index], "image_size": s.image_sizes[index],
                                "index": int(index)}
        if s.high_res_features is not None:
            item["high_res_features"] = tuple(f[index] for f in s.high_res_features)
        if self.labels is not None:
            item["label"] = torch.as_tensor(np.asarray(self.labels[index]), dtype=torch.long)
        return item


def collate_embeddings(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch `EmbeddingDataset` items: ``embedding`` (`ImageEmbedding` of B slices), ``image_size``
    ``(B, 2)``, ``index`` ``(B,)`` and, where present, ``label`` ``(B, H, W)`` int64."""
    hi = None
    if "high_res_features" in items[0]:
        hi = tuple(torch.stack(level) for level in zip(*(it["high_res_features"] for it in items)))
    batch: dict[str, Any] = {
        "embedding": ImageEmbedding(torch.stack([it["image_embeddings"] for it in items]), hi),
        "image_size": torch.stack([it["image_size"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}
    if "label" in items[0]:
        shapes = {tuple(it["label"].shape) for it in items}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch label maps of different sizes {sorted(shapes)}")
        batch["label"] = torch.stack([it["label"] for it in items])
    return batch
