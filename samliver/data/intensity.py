"""Intensity presets: named CT windows per target, and the step from windowed slices to model pixels.

A slice reaches a model in three steps, always in this order:

1. **CT window** ``(lo, hi)`` in HU, chosen per target (`WINDOWS`, `window_for`);
2. **window → uint8**: clip to the window and map ``lo → 0``, ``hi → 255`` (rounded), exactly as
   `samliver.models.base.window_to_rgb` does for the model's own ``preprocess`` (`window_to_uint8`
   calls it, so the two cannot drift apart). The slice datasets hand this out as float ``[0, 1]``
   (``uint8 / 255``);
3. **the model's own convention** (SAM: mean/std on 0–255 and pad; MedSAM: min–max to [0, 1], no
   mean/std; SAM 2: [0, 1] with ImageNet mean/std): `model_pixels` applies
   ``model.convention.to_pixels`` to the windowed slice, so a slice taken from the cache gives the same
   model input as ``model.preprocess(hu, window)`` on the raw HU.

Windows (width W, level L → ``(L - W/2, L + W/2)`` HU):

- ``liver`` W400/L40 → (-160, 240): the standard abdominal soft-tissue window and samliver's default
  (`samliver.registry.LIVER_WINDOW`); shows the whole liver against fat, vessels and bowel.
- ``tumor`` W200/L60 → (-40, 160): a narrower window for lesion conspicuity. Radiology's "liver
  window" is narrower than the soft-tissue one (about W150/L30 on unenhanced CT, e.g. Radiopaedia's
  CT windowing table), but in the portal-venous phase that most tumour datasets (LiTS, MSD) use the
  parenchyma enhances to about 100–120 HU, so W150/L30 would saturate it. W200/L60 keeps hypodense
  lesions and cysts (0–60 HU) and hyperdense lesions up to 160 HU inside the window while doubling
  the grey levels per HU of the liver window (1.3 instead of 0.64 grey levels/HU), which is what
  makes 10–30 HU lesion-to-liver contrasts visible. Common LiTS preprocessing clips to similar
  ranges (e.g. [-100, 200] or [-200, 250] HU); pass ``"LO,HI"`` to use another.
- ``abdomen`` W350/L50 → (-125, 225): the other common soft-tissue window.
- ``wide`` W2000/L0 → (-1000, 1000): lung, fat and bone context, for models that see the whole body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from samliver.registry import LIVER_WINDOW

if TYPE_CHECKING:
    from samliver.models.base import PromptableSegmenter

Window = tuple[float, float]
WindowLike = Union[str, Sequence[float]]


def from_width_level(width: float, level: float) -> Window:
    """``(lo, hi)`` HU of the window of ``width`` centred on ``level`` (both HU)."""
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


WINDOWS: dict[str, Window] = {
    "liver": LIVER_WINDOW,
    "tumor": from_width_level(200, 60),
    "abdomen": from_width_level(350, 50),
    "wide": from_width_level(2000, 0),
}
_ALIASES = {"tumour": "tumor", "lesion": "tumor", "soft-tissue": "abdomen"}


def window_for(target: WindowLike | None = None) -> Window:
    """The CT window ``(lo, hi)`` in HU for a target.

    Args:
        target: a preset name (``"liver"``, ``"tumor"``/``"tumour"``, ``"abdomen"``, ``"wide"``),
            ``"LO,HI"`` in HU, or a ``(lo, hi)`` pair; None gives the liver window.

    Raises:
        ValueError: an unknown name (listing the presets), or not a finite ``lo < hi``.
    """
    if target is None:
        return WINDOWS["liver"]
    if isinstance(target, str):
        key = _ALIASES.get(target.strip().lower(), target.strip().lower())
        if key in WINDOWS:
            return WINDOWS[key]
        if "," not in key:
            raise ValueError(f"unknown window {target!r}; use one of {', '.join(WINDOWS)} or LO,HI in HU")
        parts = key.split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"window {target!r}: LO,HI must be two numbers in HU") from None
    else:
        values = [float(v) for v in target]
    if len(values) != 2:
        raise ValueError(f"window {target!r}: expected two values (lo, hi) in HU")
    lo, hi = values
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"window {target!r}: need finite lo < hi in HU")
    return (lo, hi)


def window_to_uint8(hu: np.ndarray, window: WindowLike) -> np.ndarray:
    """HU ``(H, W)`` or ``(Z, H, W)`` → uint8 of the same shape: clipped to ``window``, 0 at lo, 255 at hi.

    Exactly the grey channel of `samliver.models.base.window_to_rgb` (it is called slice by slice).
    """
    from samliver.models.base import window_to_rgb

    win = window_for(window)
    hu = np.asarray(hu)
    if hu.ndim == 2:
        return window_to_rgb(hu, win)[..., 0]
    if hu.ndim != 3:
        raise ValueError(f"window_to_uint8: expected (H, W) or (Z, H, W), got shape {hu.shape}")
    out = np.empty(hu.shape, np.uint8)
    for z in range(hu.shape[0]):
        out[z] = window_to_rgb(hu[z], win)[..., 0]
    return out


def model_pixels(model: "PromptableSegmenter", image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Windowed slices in ``[0, 1]`` (a `SliceDataset` ``image``) → the model's input pixels.

    Args:
        model: a `PromptableSegmenter` (anything with ``.convention`` and ``.device``).
        image: ``(H, W)``, ``(B, H, W)`` or ``(B, D, H, W)`` float in ``[0, 1]``: windowed grey values
            ``g / 255`` (values outside are clipped; augmented values are rounded back to the 256 grey
            levels the model's own ``preprocess`` produces).

    Returns:
        ``(B, 3, S, S)`` float32 (or ``(B, D, 3, S, S)`` for stacks; ``(1, 3, S, S)`` for one slice) on
        the model's device, after the model's own convention: for an un-augmented slice this equals
        ``model.preprocess(hu, window)`` with the window the slice was cut with.
    """
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim not in (3, 4):
        raise ValueError(f"model_pixels: expected (H, W), (B, H, W) or (B, D, H, W), got shape {x.shape}")
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    grey = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1, h, w)
    convention = model.convention
    pixels = torch.stack([convention.to_pixels(np.repeat(g[..., None], 3, axis=2)) for g in grey])
    return pixels.reshape(*lead, *pixels.shape[1:]).to(model.device)
