"""Prompt settings from RECIST marks and from automatic box generators.

================================  =============================================================
name                              what it does
================================  =============================================================
``recist`` (``recist-ends``)      RECIST marks of each object on each reference slice (long axis
                                  and the longest perpendicular chord, from the reference, in mm)
                                  → a box enclosing both and a click where they cross (and the
                                  four line ends); see `samliver.prompts.recist`
``recist-propagate``              RECIST marks of each 3D object on its key slice, the slice of
                                  its longest axial diameter (the RECIST measurement slice),
                                  propagated through the volume as ``key-slice-propagate``
``auto`` (``auto-no-cleanup``)    no reference used: `Predictor.segment_auto` (the model's
                                  default box generator, or its prompt-free head), once per case
                                  for both targets, with (without) the 3D cleanup
================================  =============================================================
"""

from __future__ import annotations

import re

import numpy as np

from samliver.prompts import Prompts
from samliver.prompts.recist import from_recist, recist_from_mask, recist_prompts

from .settings import (CaseContext, PromptSetting, PropagateSetting, SettingError, SlicePromptSetting,
                       reference_mask, register_setting)


@register_setting(r"recist(?P<ends>-ends)?", "recist, recist-ends",
                  "RECIST long/short axes per object per slice -> box + centre click (+ line ends)")
class RecistSetting(SlicePromptSetting):
    def __init__(self, endpoints: bool = False) -> None:
        self.endpoints = bool(endpoints)

    @classmethod
    def from_match(cls, m: re.Match) -> "RecistSetting":
        return cls(endpoints=bool(m["ends"]))

    def params(self) -> dict:
        return {"endpoints": self.endpoints}

    def slice_prompts(self, ref_2d, ctx, rng):
        return recist_prompts(ref_2d, spacing=ctx.spacing[1:], endpoints=self.endpoints)


@register_setting(r"recist-propagate", "recist-propagate",
                  "RECIST marks on each 3D object's measurement slice, propagated through the volume")
class RecistPropagateSetting(PropagateSetting):
    @classmethod
    def from_match(cls, m: re.Match) -> "RecistPropagateSetting":
        return cls()

    def key_prompts(self, obj: np.ndarray, ctx: CaseContext) -> tuple[int, Prompts]:
        marks = {int(z): recist_from_mask(obj[z], ctx.spacing[1:]) for z in np.flatnonzero(obj.any(axis=(1, 2)))}
        key = max(marks, key=lambda z: marks[z].long_mm)  # ties: the lowest slice
        return key, from_recist(marks[key].long_axis, marks[key].short_axis, spacing=ctx.spacing[1:])


@register_setting(r"auto(?P<raw>-no-cleanup)?", "auto, auto-no-cleanup",
                  "fully automatic: the model's box generator (or head) -> refined masks, 3D cleanup")
class AutoSetting(PromptSetting):
    """`Predictor.segment_auto` on each case. ``box_generator`` (a `BoxGenerator`; None: the
    model's default, or its head) can be set when building the setting in Python."""

    def __init__(self, cleanup: bool = True, box_generator=None) -> None:
        self.cleanup, self.box_generator = bool(cleanup), box_generator
        self.name = "auto" if cleanup else "auto-no-cleanup"
        self._generators: dict[int, object] = {}

    @classmethod
    def from_match(cls, m: re.Match) -> "AutoSetting":
        return cls(cleanup=not m["raw"])

    def params(self) -> dict:
        given = self.box_generator
        return {"cleanup": self.cleanup, "box_generator": "model default" if given is None else type(given).__name__}

    def generator(self, model):
        """The generator used for ``model`` (None: its prompt-free head), resolved once per model."""
        from samliver.auto import NoAutomaticPromptsError, resolve_generator

        if id(model) not in self._generators:
            try:
                self._generators[id(model)] = resolve_generator(model, self.box_generator)
            except NoAutomaticPromptsError as exc:
                raise SettingError(f"{self.name}: {exc}") from None
        return self._generators[id(model)]

    def check(self, model) -> None:
        self.generator(model)

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        from samliver.predictor import Predictor

        key = ("auto", self.name)
        if key not in ctx.shared:
            predictor = Predictor(ctx.model)
            predictor.encoder = ctx.encoder  # decode from the case's cached embeddings
            ctx.shared[key] = predictor.segment_auto(ctx.hu, self.generator(ctx.model), self.cleanup,
                                                     window=ctx.window, spacing=ctx.spacing)
        return reference_mask(ctx.shared[key], target)
