"""Slice augmentation with MONAI dictionary transforms, applied identically to image, label map and object masks.

``build_augment(config)`` returns a `SliceAugment`: called on a sample dict with ``image`` ``(C, H, W)``
float (windowed ``[0, 1]``; C = 1 or the stack depth D), ``label`` ``(H, W)`` and optionally ``objects``
``(N, H, W)``, it draws one set of random parameters and warps all of them with it (image bilinear,
label and masks nearest, zero padding), then applies the intensity transforms to the image alone and
clips it to ``[0, 1]`` (the window saturates there, as it would in the CT). Objects whose mask leaves
the field of view come back empty (`SliceDataset` drops them).

Config (YAML-friendly): a mapping from transform name to its parameters (a dict merged over the defaults
below, ``True`` for the defaults, ``None``/``False`` to leave it out), plus an optional ``seed``. With a
config, exactly the transforms it names are used; ``None`` gives all of `DEFAULTS`. Unknown names or
parameters raise ValueError naming them.

=========  ============================================  ==========================================
name       parameters (defaults)                         MONAI transform
=========  ============================================  ==========================================
flip       prob 0.5, axes [0, 1] (rows, cols; each        RandFlipd, one per axis
           axis flipped independently)
rotate     prob 0.3, degrees 15 (uniform ±)               RandRotated
zoom       prob 0.3, min 0.85, max 1.15                   RandZoomd (keep_size)
elastic    prob 0.1, spacing 32 px (control grid),        Rand2DElasticd
           magnitude [1, 3]
shift      prob 0.3, offset 0.05 (in [0, 1] units)        RandShiftIntensityd (image only)
noise      prob 0.2, std 0.02 (in [0, 1] units)           RandGaussianNoised (image only)
=========  ============================================  ==========================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (Compose, Rand2DElasticd, RandFlipd, RandGaussianNoised, RandRotated,
                              RandShiftIntensityd, RandZoomd)

DEFAULTS: dict[str, dict[str, Any]] = {
    "flip": {"prob": 0.5, "axes": [0, 1]},
    "rotate": {"prob": 0.3, "degrees": 15.0},
    "zoom": {"prob": 0.3, "min": 0.85, "max": 1.15},
    "elastic": {"prob": 0.1, "spacing": 32.0, "magnitude": [1.0, 3.0]},
    "shift": {"prob": 0.3, "offset": 0.05},
    "noise": {"prob": 0.2, "std": 0.02},
}
_GEOMETRIC = ("flip", "rotate", "zoom", "elastic")
_KEYS = ("image", "masks")  # internal: masks = label map and object masks stacked as channels


def build_augment(config: Mapping[str, Any] | None = None) -> SliceAugment:
    """A `SliceAugment` from ``config`` (see the module docstring); None gives the defaults."""
    return SliceAugment(config)


class SliceAugment:
    """Seeded MONAI augmentation of one slice sample (see the module docstring).

    ``set_random_state(seed)`` reseeds; ``set_epoch(epoch)`` moves to that epoch's stream. In DataLoader
    workers each worker derives its own stream from ``(seed, worker id, epoch)`` on its first call, so
    workers do not repeat each other's draws, and epochs differ.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.params = resolve_config(config)
        seed = (config or {}).get("seed", 0)
        self.epoch = 0
        self._geometric = Compose([t for name in _GEOMETRIC if name in self.params
                                   for t in _transforms(name, self.params[name])])
        self._intensity = Compose([t for name in ("shift", "noise") if name in self.params
                                   for t in _transforms(name, self.params[name])])
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None) -> SliceAugment:
        """Reseed every transform from ``seed`` (MONAI's convention; None: OS entropy)."""
        self.seed = None if seed is None else int(seed)
        self._reseed()
        return self

    def set_epoch(self, epoch: int) -> None:
        """Mix ``epoch`` into the stream (DataLoader workers restart each epoch from a copy of this object)."""
        self.epoch = int(epoch)
        self._reseed()

    def _reseed(self) -> None:
        self._owner = _owner()
        if self.seed is None:
            states: list[int | None] = [None, None]
        else:
            entropy = [self.seed, self._owner[1], self.epoch]
            states = [int(v) for v in np.random.SeedSequence(entropy).generate_state(2)]
        self._geometric.set_random_state(states[0])
        self._intensity.set_random_state(states[1])

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Augment ``sample`` (``image`` ``(C, H, W)``, ``label`` ``(H, W)``, optional ``objects`` ``(N, H, W)``).

        Returns a new dict with the same keys (others copied): image float32 in ``[0, 1]``, label long,
        objects bool, all torch tensors of the input shapes.
        """
        if self._owner != _owner():
            self._reseed()
        image = torch.as_tensor(sample["image"], dtype=torch.float32)
        label = torch.as_tensor(sample["label"])
        objects = sample.get("objects")
        n = 0 if objects is None else int(objects.shape[0])
        masks = torch.cat([label[None].float()] + ([torch.as_tensor(objects).float()] if n else []))
        with _without_meta():
            out = self._geometric({"image": image, "masks": masks})
            out = self._intensity({"image": out["image"]}) | {"masks": out["masks"]}
        result = dict(sample)
        result["image"] = _plain(out["image"]).float().clamp_(0.0, 1.0)
        warped = _plain(out["masks"])
        result["label"] = warped[0].round().long()
        if objects is not None:
            result["objects"] = warped[1:] > 0.5
        return result


def resolve_config(config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validated per-transform parameters: the named transforms' parameters over `DEFAULTS`."""
    if config is None:
        return {k: dict(v) for k, v in DEFAULTS.items()}
    if not isinstance(config, Mapping):
        raise ValueError(f"augment config must be a mapping; got {type(config).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for name, value in config.items():
        if name == "seed":
            continue
        if name not in DEFAULTS:
            raise ValueError(f"augment config: unknown transform {name!r}; known: seed, {', '.join(DEFAULTS)}")
        if value is None or value is False:
            continue
        given = {} if value is True else value
        if not isinstance(given, Mapping):
            raise ValueError(f"augment config: {name} must be a mapping of parameters, true or null")
        unknown = [k for k in given if k not in DEFAULTS[name]]
        if unknown:
            raise ValueError(f"augment config: unknown parameter {name}.{unknown[0]}; "
                             f"known: {', '.join(DEFAULTS[name])}")
        params = {**DEFAULTS[name], **given}
        if not 0.0 <= float(params["prob"]) <= 1.0:
            raise ValueError(f"augment config: {name}.prob must lie in [0, 1]; got {params['prob']}")
        out[name] = params
    return out


def _transforms(name: str, p: dict[str, Any]) -> list:
    """The MONAI dictionary transform(s) for one config entry."""
    prob = float(p["prob"])
    geo = dict(keys=_KEYS, prob=prob)
    if name == "flip":
        axes = [int(a) for a in p["axes"]]
        if any(a not in (0, 1) for a in axes):
            raise ValueError(f"augment config: flip.axes must be 0 (rows) and/or 1 (columns); got {p['axes']}")
        return [RandFlipd(keys=_KEYS, prob=prob, spatial_axis=a) for a in axes]
    if name == "rotate":
        r = math.radians(float(p["degrees"]))
        return [RandRotated(range_x=(-r, r), mode=("bilinear", "nearest"), padding_mode="zeros", **geo)]
    if name == "zoom":
        # torch's "nearest" resize is off by up to a pixel against "bilinear"; "nearest-exact" is aligned
        return [RandZoomd(min_zoom=float(p["min"]), max_zoom=float(p["max"]), mode=("bilinear", "nearest-exact"),
                          padding_mode="constant", keep_size=True, **geo)]
    if name == "elastic":
        s = float(p["spacing"])
        lo, hi = (float(v) for v in p["magnitude"])
        return [Rand2DElasticd(spacing=(s, s), magnitude_range=(lo, hi), mode=("bilinear", "nearest"),
                               padding_mode="zeros", **geo)]
    if name == "shift":
        return [RandShiftIntensityd(keys="image", offsets=float(p["offset"]), prob=prob)]
    return [RandGaussianNoised(keys="image", std=float(p["std"]), prob=prob)]


@contextmanager
def _without_meta() -> Iterator[None]:
    """MONAI transforms on plain tensors: tracking MetaTensor metadata (which `_plain` drops anyway) made up
    about 40 % of an augmented slice's loading time."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)


def _plain(x: Any) -> torch.Tensor:
    """A plain torch tensor (MONAI returns MetaTensors, whose metadata would leak into batches)."""
    return torch.as_tensor(x).as_subclass(torch.Tensor)


def _owner() -> tuple[int, int]:
    """``(process id, DataLoader worker id or 0)``."""
    info = torch.utils.data.get_worker_info()
    return os.getpid(), 0 if info is None else int(info.id)
