"""Prompt settings: named, parameterised ways to prompt a model during evaluation.

A setting turns one case's reference mask of one target into a predicted mask ``(Z, Y, X)``
bool, decoding from the case's cached slice embeddings (`CaseContext.embeddings`): every slice
is encoded once per case, whatever the number of settings. Settings register by a name
pattern; `get_setting("box-jitter-5mm")` builds one. Built in:

================================  =============================================================
name                              what it does
================================  =============================================================
``box``                           one exact box per object (2D connected component) per slice
``box-jitter-5mm`` / ``-3px``     each box side moved by a uniform offset in ``[-j, j]`` mm / px
``point-K`` (``point-K-neg-M``)   K positive (and M negative) clicks per object per slice; the
                                  first is the object's most interior pixel
``clicks-K``                      interactive: one click at the object's centre, then K - 1
                                  corrective clicks, each at the centre of the largest error
                                  region (positive in a miss, negative in a false positive),
                                  with the previous mask's logits fed back
``key-slice-propagate``           each 3D object (connected component) gets boxes on its largest
                                  slice and is propagated through the volume
``head``                          the model's prompt-free head (``decoder`` adapter with
                                  ``head: multiclass``); no prompts
================================  =============================================================

Only slices where a target's reference is present are prompted by the slice-wise settings
(the literature's protocol); every other slice is predicted empty. Randomness (jitter, extra
points) comes from `CaseContext.rng`, seeded by run seed, case, setting, target and slice, so a
resumed run draws the same prompts.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from samliver.errors import SamliverError
from samliver.inference import SliceEncoder, decode_objects
from samliver.prompts import Prompts, boxes_from_mask, points_from_mask

TARGETS = ("liver", "tumour")
_CONN_2D = np.ones((3, 3), bool)
_CONN_3D = np.ones((3, 3, 3), bool)


class SettingError(SamliverError, ValueError):
    """An unknown prompt setting name, or a setting the model cannot run."""


def reference_mask(label: np.ndarray, target: str) -> np.ndarray:
    """The reference of ``target`` in a label map ``(Z, Y, X)`` (0/1/2): liver is labels 1 and 2
    (the organ including its tumours, as LiTS scores it), tumour is label 2. Returns bool."""
    if target == "liver":
        return label >= 1
    if target == "tumour":
        return label == 2
    raise SettingError(f"target {target!r}: choose from {', '.join(TARGETS)}")


@dataclass
class CaseContext:
    """What a setting sees of one case.

    Attributes:
        model: the `PromptableSegmenter` under evaluation.
        name: case name.
        hu: ``(Z, Y, X)`` float32 HU.
        spacing: ``(z, y, x)`` mm.
        label: ``(Z, Y, X)`` uint8 reference labels.
        encoder: the case's shared `SliceEncoder` (its cache holds the whole case).
        window: CT window override, or None for the model's default.
        seed: the run's seed.
        shared: per-case memo for settings (e.g. the head's label map, used by both targets).
    """

    model: object
    name: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    label: np.ndarray
    encoder: SliceEncoder
    window: tuple[float, float] | None = None
    seed: int = 0
    shared: dict = field(default_factory=dict)

    def reference(self, target: str) -> np.ndarray:
        return reference_mask(self.label, target)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.hu.shape[1]), int(self.hu.shape[2])

    def embeddings(self, slices) -> dict:
        """``{z: ImageEmbedding}`` for ``slices``, encoded in batches through the shared cache."""
        return self.encoder.encode(self.hu, [int(z) for z in slices], self.window)

    def rng(self, *parts) -> np.random.Generator:
        """A generator seeded by the run seed, the case name and ``parts`` (setting, target, slice)."""
        text = "\0".join(str(p) for p in (self.seed, self.name, *parts))
        return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


class PromptSetting(ABC):
    """One prompt setting. Subclasses set ``name`` (the registered name that built them)."""

    name: str = ""
    description: str = ""

    def params(self) -> dict:
        """The setting's parameters (recorded in the run folder)."""
        return {}

    def check(self, model) -> None:
        """Raise a `SamliverError` when ``model`` cannot run this setting."""

    @abstractmethod
    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        """Predicted mask ``(Z, Y, X)`` bool of ``target`` for the case in ``ctx``."""


class SlicePromptSetting(PromptSetting):
    """A setting that prompts every reference slice independently, from that slice's reference."""

    multimask = False

    @abstractmethod
    def slice_prompts(self, ref_2d: np.ndarray, ctx: CaseContext, rng: np.random.Generator) -> Prompts | None:
        """Prompts for the objects of one slice's reference ``(H, W)`` bool (None: nothing to prompt)."""

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        def one_slice(z: int, ref_2d: np.ndarray, embedding) -> np.ndarray | None:
            prompts = self.slice_prompts(ref_2d, ctx, ctx.rng(self.name, target, z))
            if prompts is None:
                return None
            pred = decode_objects(ctx.model, embedding, prompts.check_inside(*ctx.image_size),
                                  ctx.image_size, self.multimask)
            return pred.masks.any(axis=0)

        return per_reference_slice(ctx, target, one_slice)


def per_reference_slice(ctx: CaseContext, target: str,
                        segment: Callable[[int, np.ndarray, Any], np.ndarray | None]) -> np.ndarray:
    """``(Z, H, W)`` bool: ``segment(z, ref_2d, embedding)`` on every slice where the target's
    reference is present (all their embeddings fetched from the case's shared cache at once)."""
    ref = ctx.reference(target)
    out = np.zeros(ref.shape, bool)
    zs = np.flatnonzero(ref.any(axis=(1, 2)))
    embeddings = ctx.embeddings(zs)
    for z in zs:
        mask = segment(int(z), ref[z], embeddings[int(z)])
        if mask is not None:
            out[z] = mask
    return out


# ------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class _Entry:
    pattern: re.Pattern
    factory: Callable[[re.Match], PromptSetting]
    examples: str
    description: str


_REGISTRY: list[_Entry] = []


def register_setting(pattern: str, examples: str, description: str = ""):
    """Decorator: ``factory(match) -> PromptSetting`` builds the settings whose names fully match
    the regular expression ``pattern`` (a class with a ``from_match`` classmethod also works).
    ``examples`` are names shown in `list_settings` and error messages. Later registrations win."""
    compiled = re.compile(pattern)

    def wrap(factory):
        build = getattr(factory, "from_match", factory)
        _REGISTRY.insert(0, _Entry(compiled, build, examples, description))
        return factory
    return wrap


def list_settings() -> list[tuple[str, str]]:
    """``(example names, description)`` of every registered setting family."""
    return [(e.examples, e.description) for e in reversed(_REGISTRY)]


def get_setting(name: str) -> PromptSetting:
    """The setting called ``name``; an unknown name raises `SettingError` listing the valid ones."""
    name = str(name).strip()
    for entry in _REGISTRY:
        match = entry.pattern.fullmatch(name)
        if match:
            setting = entry.factory(match)
            setting.name = name
            return setting
    valid = "; ".join(e for e, _ in list_settings())
    raise SettingError(f"unknown prompt setting {name!r}; valid settings: {valid}")


def parse_settings(names) -> list[PromptSetting]:
    """``"box,point-1"`` or a list of names/settings -> settings (repeats refused)."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    settings = [n if isinstance(n, PromptSetting) else get_setting(n) for n in names]
    if not settings:
        raise SettingError("no prompt settings given; valid settings: " + "; ".join(e for e, _ in list_settings()))
    seen = [s.name for s in settings]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise SettingError(f"prompt settings listed twice: {', '.join(repeated)}")
    return settings


# ------------------------------------------------------------------------------ built-ins

@register_setting(r"box(?:-jitter-(?P<amount>\d+(?:\.\d+)?)(?P<unit>mm|px))?",
                  "box, box-jitter-5mm, box-jitter-3px", "a box per object per slice, exact or jittered")
class BoxSetting(SlicePromptSetting):
    def __init__(self, jitter_mm: float = 0.0, jitter_px: float = 0.0) -> None:
        self.jitter_mm, self.jitter_px = float(jitter_mm), float(jitter_px)

    @classmethod
    def from_match(cls, m: re.Match) -> "BoxSetting":
        amount = float(m["amount"] or 0)
        return cls(jitter_mm=amount) if m["unit"] == "mm" else cls(jitter_px=amount)

    def params(self) -> dict:
        return {"jitter_mm": self.jitter_mm, "jitter_px": self.jitter_px}

    def slice_prompts(self, ref_2d, ctx, rng):
        if self.jitter_mm:
            return boxes_from_mask(ref_2d, jitter_mm=self.jitter_mm, spacing=ctx.spacing[1:], rng=rng)
        return boxes_from_mask(ref_2d, jitter_px=self.jitter_px, rng=rng)


@register_setting(r"points?-(?P<pos>\d+)(?:-neg-(?P<neg>\d+))?", "point-1, point-3, point-3-neg-1",
                  "K positive (M negative) clicks per object per slice")
class PointSetting(SlicePromptSetting):
    def __init__(self, n_pos: int = 1, n_neg: int = 0) -> None:
        if n_pos < 1:
            raise SettingError(f"point-{n_pos}: need at least one positive point")
        self.n_pos, self.n_neg = int(n_pos), int(n_neg)
        # One click is ambiguous (part or whole?): let the decoder propose 3 masks and keep the best, as SAM does.
        self.multimask = self.n_pos + self.n_neg == 1

    @classmethod
    def from_match(cls, m: re.Match) -> "PointSetting":
        return cls(int(m["pos"]), int(m["neg"] or 0))

    def params(self) -> dict:
        return {"n_pos": self.n_pos, "n_neg": self.n_neg, "multimask": self.multimask}

    def slice_prompts(self, ref_2d, ctx, rng):
        return points_from_mask(ref_2d, n_pos=self.n_pos, n_neg=self.n_neg, rng=rng)


def region_centre(region: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the most interior pixel of a non-empty ``(H, W)`` bool region (largest
    distance to its border; nearest the centroid among ties), as `points_from_mask` clicks."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(region)
    deep_r, deep_c = np.nonzero(depth == depth.max())
    k = int(np.argmin((deep_r - rows.mean()) ** 2 + (deep_c - cols.mean()) ** 2))
    return float(deep_c[k]), float(deep_r[k])


def corrective_click(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, int] | None:
    """The next simulated click on one object: the centre of the largest connected error region of
    ``pred`` against ``ref`` (both ``(H, W)`` bool): ``(x, y, 1)`` in a miss, ``(x, y, 0)`` in a
    false positive; None when the prediction is exact."""
    error = pred ^ ref
    if not error.any():
        return None
    components, n = ndimage.label(error, structure=_CONN_2D)
    largest = components == (1 + int(np.argmax(np.bincount(components.ravel())[1:])))
    x, y = region_centre(largest)
    return x, y, int(ref[int(y), int(x)])


@register_setting(r"clicks-(?P<k>\d+)", "clicks-5", "1 centre click, then corrective clicks on the largest error")
class ClicksSetting(PromptSetting):
    def __init__(self, clicks: int = 5, feed_mask: bool = True) -> None:
        if clicks < 1:
            raise SettingError(f"clicks-{clicks}: need at least one click")
        self.clicks, self.feed_mask = int(clicks), feed_mask

    @classmethod
    def from_match(cls, m: re.Match) -> "ClicksSetting":
        return cls(int(m["k"]))

    def params(self) -> dict:
        return {"clicks": self.clicks, "feed_mask": self.feed_mask}

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        def one_slice(z: int, ref_2d: np.ndarray, embedding) -> np.ndarray:
            components, n = ndimage.label(ref_2d, structure=_CONN_2D)
            return np.any(self._interact(ctx, embedding, [components == k for k in range(1, n + 1)]), axis=0)

        return per_reference_slice(ctx, target, one_slice)

    def _interact(self, ctx: CaseContext, embedding, objects: list[np.ndarray]) -> np.ndarray:
        """Masks ``(N, H, W)`` after the click sequence on each of one slice's N objects."""
        model, hw = ctx.model, ctx.image_size
        clicks = [[(*region_centre(obj), 1)] for obj in objects]
        masks = np.zeros((len(objects), *hw), bool)
        low_res: list = [None] * len(objects)
        active = list(range(len(objects)))
        for step in range(self.clicks):
            pts = np.array([[c[:2] for c in clicks[i]] for i in active], np.float32)
            labels = np.array([[c[2] for c in clicks[i]] for i in active], np.int64)
            fed = np.stack([low_res[i] for i in active]) if step and self.feed_mask else None
            prompts = Prompts(points=pts, point_labels=labels, masks=fed).check_inside(*hw)
            pred = decode_objects(model, embedding, prompts, hw, multimask=step == 0)
            new = pred.masks
            still = []
            for j, i in enumerate(active):
                masks[i], low_res[i] = new[j], pred.low_res_logits[j]
                nxt = corrective_click(new[j], objects[i]) if step + 1 < self.clicks else None
                if nxt is not None:
                    clicks[i].append(nxt)
                    still.append(i)
            active = still
            if not active:
                break
        return masks


@register_setting(r"key-slice-propagate", "key-slice-propagate",
                  "boxes on each 3D object's largest slice, propagated through the volume")
class PropagateSetting(PromptSetting):
    def __init__(self, margin_px: float = 2.0) -> None:
        self.margin_px = float(margin_px)

    @classmethod
    def from_match(cls, m: re.Match) -> "PropagateSetting":
        return cls()

    def params(self) -> dict:
        return {"margin_px": self.margin_px}

    def key_prompts(self, obj: np.ndarray, ctx: CaseContext) -> tuple[int, Prompts]:
        """One 3D object's ``(Z, Y, X)`` bool key slice and prompts there: its largest slice, a box."""
        key = int(np.argmax(obj.sum(axis=(1, 2))))
        return key, boxes_from_mask(obj[key])

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        from samliver.models.base import PromptableSegmenter
        from samliver.propagation import propagate_boxes

        ref = ctx.reference(target)
        out = np.zeros(ref.shape, bool)
        components, n = ndimage.label(ref, structure=_CONN_3D)
        # Box propagation shares the case's cached embeddings; a family with its own memory
        # (SAM 2's video model) propagates through its own path.
        own = type(ctx.model).propagate is not PromptableSegmenter.propagate
        for k in range(1, n + 1):
            key, prompts = self.key_prompts(components == k, ctx)
            if own:
                pred = ctx.model.propagate(ctx.hu, key, prompts, ctx.window)
            else:
                pred = propagate_boxes(ctx.model, ctx.hu, key, prompts, ctx.window, margin_px=self.margin_px,
                                       encoder=ctx.encoder)
            out |= pred > 0
        return out


@register_setting(r"head", "head", "the model's prompt-free head (decoder adapter, head: multiclass)")
class HeadSetting(PromptSetting):
    @classmethod
    def from_match(cls, m: re.Match) -> "HeadSetting":
        return cls()

    def check(self, model) -> None:
        from samliver.adapters.task_head import require_task_head

        require_task_head(model)

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        from samliver.predictor import Predictor

        if "head" not in ctx.shared:
            predictor = Predictor(ctx.model)
            predictor.encoder = ctx.encoder  # decode from the case's cached embeddings
            ctx.shared["head"] = predictor.segment_head(ctx.hu, ctx.window)
        return reference_mask(ctx.shared["head"], target)
