"""Intensity and geometry conventions: how a windowed slice becomes model pixels, how
prompt coordinates map into model space, and how logits map back.

These differ between SAM, MedSAM and SAM 2, and mixing them up is the most common failure
in this field, so each is one small class registered by name (`ModelSpec.intensity`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

_CONVENTIONS: dict[str, Callable[[int], "Convention"]] = {}


def register_convention(name: str):
    """Class decorator: make a `Convention` available as ``ModelSpec.intensity = name``."""
    def wrap(cls):
        _CONVENTIONS[name] = cls
        return cls
    return wrap


def get_convention(name: str, input_size: int) -> "Convention":
    try:
        return _CONVENTIONS[name](input_size)
    except KeyError:
        raise ValueError(f"unknown intensity convention {name!r}; known: {', '.join(sorted(_CONVENTIONS))}") from None


class Convention(ABC):
    """One model family's image and coordinate convention for a square input of side ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size

    @abstractmethod
    def to_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 RGB slice ``(H, W, 3)`` -> float32 model pixels ``(3, S, S)``."""

    @abstractmethod
    def scale(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """``(sx, sy)``: factors from input-slice pixels to model-input pixels."""

    def map_coords(self, coords: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """``(..., 2)`` ``(x, y)`` slice pixels -> model-input pixels."""
        sx, sy = self.scale(image_size)
        return np.asarray(coords, np.float32) * np.array([sx, sy], np.float32)

    def map_boxes(self, boxes: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """``(N, 4)`` xyxy slice pixels -> model-input pixels."""
        return self.map_coords(np.asarray(boxes).reshape(-1, 2, 2), image_size).reshape(-1, 4)

    @abstractmethod
    def upsample(self, low_res_logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """``(N, M, h, w)`` low-res logits -> ``(N, M, H, W)`` at the input slice size."""


@register_convention("sam")
class SamConvention(Convention):
    """SAM: RGB 0-255 resized so the longest side is S (PIL bilinear, as `SamPredictor`),
    SAM's pixel mean/std, zero padding to S x S at the bottom/right."""

    pixel_mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    pixel_std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)

    def __init__(self, size: int) -> None:
        super().__init__(size)
        from segment_anything.utils.transforms import ResizeLongestSide

        self._resize = ResizeLongestSide(size)

    def resized_shape(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self._resize.get_preprocess_shape(image_size[0], image_size[1], self.size)

    def to_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        resized = torch.from_numpy(self._resize.apply_image(rgb)).permute(2, 0, 1).float()
        normed = (resized - self.pixel_mean) / self.pixel_std
        h, w = normed.shape[-2:]
        return F.pad(normed, (0, self.size - w, 0, self.size - h))

    def scale(self, image_size: tuple[int, int]) -> tuple[float, float]:
        h, w = self.resized_shape(image_size)
        return w / image_size[1], h / image_size[0]

    def upsample(self, low_res_logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        h, w = self.resized_shape(image_size)
        padded = F.interpolate(low_res_logits, (self.size, self.size), mode="bilinear", align_corners=False)
        return F.interpolate(padded[..., :h, :w], image_size, mode="bilinear", align_corners=False)


class _SquareConvention(Convention):
    """Resize to S x S (aspect ratio not kept); logits go straight back to the slice size."""

    def scale(self, image_size: tuple[int, int]) -> tuple[float, float]:
        return self.size / image_size[1], self.size / image_size[0]

    def upsample(self, low_res_logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(low_res_logits, image_size, mode="bilinear", align_corners=False)


@register_convention("medsam")
class MedSamConvention(_SquareConvention):
    """MedSAM: windowed uint8 RGB, order-3 resize to S x S (skimage, as MedSAM's own
    inference) back to uint8, min-max to [0, 1], no mean/std; boxes scaled to S x S."""

    def to_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        from skimage.transform import resize

        # A windowed CT slice has three equal channels: resizing one gives the same result
        # three times faster (order-3 resizing to 1024 x 1024 dominates MedSAM's preprocessing).
        gray = bool((rgb[..., :1] == rgb[..., 1:]).all())
        src = rgb[..., :1] if gray else rgb
        # MedSAM truncates the resized image back to uint8 before min-max scaling.
        img = resize(src, (self.size, self.size), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        img = (img - img.min()) / np.clip(img.max() - img.min(), 1e-8, None)
        pixels = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)
        return (pixels.expand(3, -1, -1) if gray else pixels).contiguous()


@register_convention("sam2")
class Sam2Convention(_SquareConvention):
    """SAM 2: RGB to [0, 1], bilinear (antialiased) resize to S x S, ImageNet mean/std,
    as Meta's ``SAM2Transforms``."""

    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def to_pixels(self, rgb: np.ndarray) -> torch.Tensor:
        from torchvision.transforms.functional import resize

        img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        img = resize(img, [self.size, self.size], antialias=True)
        return (img - self.mean) / self.std
