"""The ``text`` prompt setting: CLIP text prompts through the model's trained text projection.

================================  =============================================================
name                              what it does
================================  =============================================================
``text``                          each target is prompted by its class description (the first
                                  description the projection was trained with, e.g. "liver",
                                  "liver tumor") on **every** slice of the case
================================  =============================================================

A text prompt says nothing about where, so, unlike the slice-wise settings, no reference is used
to pick slices: every slice is encoded and decoded, and false positives on slices without the
target count. The model needs a trained text projection (``train_adapter.py --text-prompts``).
"""

from __future__ import annotations

import re

import numpy as np

from samliver.inference import decode_objects
from samliver.prompts import Prompts
from samliver.prompts.clip_text import CLASS_LABELS, text_prompter, text_tokens

from .settings import CaseContext, PromptSetting, SettingError, register_setting


@register_setting(r"text", "text", "the target's class description via the trained text projection, every slice")
class TextSetting(PromptSetting):
    @classmethod
    def from_match(cls, m: re.Match) -> "TextSetting":
        return cls()

    def params(self) -> dict:
        return {"slices": "all"}

    def check(self, model) -> None:
        from samliver.errors import PromptError

        try:
            text_prompter(model)
        except PromptError as exc:
            raise SettingError(f"prompt setting 'text': {exc}") from None

    def description(self, model, target: str) -> str:
        """The text that prompts ``target`` (``liver`` / ``tumour``): its class's first description."""
        text = text_prompter(model).description(CLASS_LABELS[target])
        if text is None:
            raise SettingError(f"prompt setting 'text': the model's text projection was trained without a "
                               f"{target} description")
        return text

    def predict(self, ctx: CaseContext, target: str) -> np.ndarray:
        tokens, _ = text_tokens(ctx.model, [self.description(ctx.model, target)])
        prompts = Prompts(tokens=tokens)
        depth = ctx.hu.shape[0]
        out = np.zeros(ctx.hu.shape, bool)
        step = max(1, ctx.encoder.batch_size)
        for start in range(0, depth, step):
            embeddings = ctx.embeddings(range(start, min(start + step, depth)))
            for z, embedding in embeddings.items():
                out[z] = decode_objects(ctx.model, embedding, prompts, ctx.image_size).masks[0]
        return out
