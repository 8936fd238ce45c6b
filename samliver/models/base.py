"""The one model interface: every backbone is a `PromptableSegmenter` with four steps.

``preprocess(hu) -> encode(pixels) -> decode(embedding, prompts) -> postprocess(logits, hw)``.
Wrappers have their own forward paths (never upstream ``@torch.no_grad()`` entry points),
so the same code serves inference and training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from samliver.prompts import Prompts
from samliver.registry import ModelSpec

from .conventions import Convention, get_convention


@dataclass
class ImageEmbedding:
    """Encoder output for B images.

    Attributes:
        image_embeddings: ``(B, C, h, w)``; C = 256, h = w = input_size / 16 for SAM-family models.
        high_res_features: SAM 2 only: finer feature maps, each ``(B, C_i, h_i, w_i)``.
    """

    image_embeddings: torch.Tensor
    high_res_features: tuple[torch.Tensor, ...] | None = None

    def __len__(self) -> int:
        return int(self.image_embeddings.shape[0])

    def select(self, index: int | slice) -> "ImageEmbedding":
        """The embedding of image ``index`` (batch dimension kept)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        hi = None if self.high_res_features is None else tuple(f[index] for f in self.high_res_features)
        return ImageEmbedding(self.image_embeddings[index], hi)

    def to(self, device: torch.device | str) -> "ImageEmbedding":
        hi = None if self.high_res_features is None else tuple(f.to(device) for f in self.high_res_features)
        return ImageEmbedding(self.image_embeddings.to(device), hi)

    @staticmethod
    def cat(parts: list["ImageEmbedding"]) -> "ImageEmbedding":
        """Concatenate embeddings along the batch dimension."""
        hi = None
        if parts[0].high_res_features is not None:
            hi = tuple(torch.cat(level) for level in zip(*(p.high_res_features for p in parts)))
        return ImageEmbedding(torch.cat([p.image_embeddings for p in parts]), hi)


@dataclass
class DecoderOutput:
    """Mask decoder output for N objects of one image.

    Attributes:
        low_res_logits: ``(N, M, h, w)`` mask logits at the low-res size (256 for SAM-family models);
            M = 1, or 3 with ``multimask``.
        iou_scores: ``(N, M)`` predicted IoU of each mask.
    """

    low_res_logits: torch.Tensor
    iou_scores: torch.Tensor


class PromptableSegmenter(nn.Module, ABC):
    """Base class of all wrapped backbones.

    Subclasses implement `encode` and `decode`; `preprocess` and `postprocess` follow the
    spec's intensity/geometry convention (see `samliver.models.conventions`).
    """

    mask_threshold: float = 0.0
    #: whether `load_model(..., input_size=S)` may build this family at another input size
    resizable_input: bool = False

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.convention: Convention = get_convention(spec.intensity, spec.input_size)
        #: sha256 of the checkpoint the weights came from (None: random weights)
        self.checkpoint_sha256: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (and of `Prompts.masks`), in pixels."""
        return 4 * (self.spec.input_size // 16)

    def preprocess(self, hu: np.ndarray | torch.Tensor, window: tuple[float, float] | None = None) -> torch.Tensor:
        """HU slices ``(B, H, W)`` (or one ``(H, W)``) -> model pixels ``(B, 3, S, S)`` float32 on the model's device.

        ``window`` ``(lo, hi)`` in HU overrides the model's default CT window.
        """
        hu = hu.detach().cpu().numpy() if isinstance(hu, torch.Tensor) else np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[None]
        if hu.ndim != 3:
            raise ValueError(f"preprocess: expected HU slices (B, H, W), got shape {hu.shape}")
        lo, hi = self.spec.window if window is None else window
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise ValueError(f"window: need finite lo < hi in HU, got ({lo}, {hi})")
        pixels = [self.convention.to_pixels(window_to_rgb(s, (lo, hi))) for s in hu]
        return torch.stack(pixels).to(self.device)

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> ImageEmbedding:
        """Model pixels ``(B, 3, S, S)`` -> `ImageEmbedding` (with gradients if enabled)."""

    @abstractmethod
    def decode(self, embedding: ImageEmbedding, prompts: Prompts, image_size: tuple[int, int],
               multimask: bool = False) -> DecoderOutput:
        """Decode N objects of one image.

        Args:
            embedding: the embedding of one image (batch 1).
            prompts: N objects in the input slice's pixel coordinates.
            image_size: ``(H, W)`` of the input slice, to map prompt coordinates into model space.
        """

    def postprocess(self, low_res_logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits ``(N, M, h, w)`` -> logits ``(N, M, H, W)`` at the input slice size."""
        return self.convention.upsample(low_res_logits, image_size)

    def set_fast_attention(self, enabled: bool) -> int:
        """Switch the encoder's attention between a fast path and upstream's own forward; returns the
        number of modules switched. Families without a fast path of ours (SAM 2: transformers already
        runs SDPA) switch none."""
        return 0

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors (any format this family reads), strictly."""
        raise NotImplementedError(f"{type(self).__name__} cannot load checkpoints")

    def propagate(self, hu_volume: np.ndarray, key_slice: int, prompts: Prompts,
                  window: tuple[float, float] | None = None) -> np.ndarray:
        """3D segmentation from prompts on one slice.

        Args:
            hu_volume: ``(Z, H, W)`` float32 HU, canonical orientation.
            key_slice: index of the prompted slice.
            prompts: the key slice's N objects.
        Returns:
            ``(Z, H, W)`` uint8 with each object's label (higher label wins on overlap).

        The default is box propagation (`samliver.propagation`); families with a memory
        (SAM 2's video predictor) override it.
        """
        from samliver.propagation import propagate_boxes

        return propagate_boxes(self, hu_volume, key_slice, prompts, window)


def prompt_tensor(values: np.ndarray | torch.Tensor, device: torch.device,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """A prompt array (numpy or tensor) on ``device``, copied with ``non_blocking``: a blocking host-to-device
    copy makes PyTorch wait for all work queued on the stream (the encoder's forward), a sync that a
    training step must not have."""
    tensor = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))
    return tensor.to(device=device, dtype=dtype, non_blocking=True)


def window_to_rgb(hu_2d: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip an HU slice ``(H, W)`` to ``window`` and scale to uint8 RGB ``(H, W, 3)`` (0 at lo, 255 at hi)."""
    lo, hi = window
    scaled = (np.clip(hu_2d.astype(np.float32), lo, hi) - lo) * (255.0 / (hi - lo))
    gray = np.rint(scaled).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)
