"""Prompt sources: where a self-training teacher gets its first prompts on an unlabelled CT.

A source is registered by name (`register_prompt_source`) and named in configs as ``NAME`` or
``NAME:ARG`` (``pseudo_labels.prompts``, ``--pseudo-prompts``), so nothing branches on source names:

- ``auto``: the teacher's own automatic prompts: its prompt-free head, else its default box
  generator (`samliver.prompts.generators`); see `samliver.prompts.pseudo_labels.pseudo_label`.
- ``unet:PATH``: a saved box U-Net (`samliver.prompts.unet_boxes.load_box_generator`).
- ``files:FOLDER``: given prompts, ``FOLDER/<case name>.json`` in the format of
  ``samliver segment --prompts-file`` (e.g. an annotator's boxes).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from samliver.errors import PromptError

from .pseudo_labels import VolumePrompts

#: ``(predictor, ct (CTVolume), case name) -> {z: Prompts or [Prompts, ...]}``, or None: the teacher's own
PromptSource = Callable[[Any, Any, str], "VolumePrompts | None"]
PROMPT_SOURCES: dict[str, Callable[[str | None], PromptSource]] = {}


def register_prompt_source(name: str) -> Callable:
    """Decorator: register ``factory(arg: str | None) -> PromptSource`` as the source ``name``
    (spelt ``name`` or ``name:arg`` in configs, e.g. a U-Net's ``unet:PATH``)."""
    def add(factory: Callable[[str | None], PromptSource]) -> Callable[[str | None], PromptSource]:
        PROMPT_SOURCES[name] = factory
        return factory
    return add


def list_prompt_sources() -> list[str]:
    return sorted(PROMPT_SOURCES)


def prompt_source(spec: str) -> PromptSource:
    """The prompt source ``spec`` names (``NAME`` or ``NAME:ARG``).

    Raises:
        PromptError: an unknown name (with the closest known one), or a bad argument.
    """
    name, _, arg = str(spec).partition(":")
    if name not in PROMPT_SOURCES:
        close = difflib.get_close_matches(name, list(PROMPT_SOURCES), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PromptError(f"pseudo-label prompt source {spec!r} is unknown{hint}; "
                          f"registered: {', '.join(list_prompt_sources())}")
    return PROMPT_SOURCES[name](arg or None)


def check_source(source: PromptSource, names: Sequence[str]) -> None:
    """Check now, before any training, that ``source`` can give prompts for the cases ``names``: a source
    may carry ``check(names)`` (``files:FOLDER``: every ``<case>.json`` exists); others need no check.

    Raises:
        PromptError: the first case it cannot serve.
    """
    check = getattr(source, "check", None)
    if check is not None:
        check(names)


def is_automatic(source: PromptSource) -> bool:
    """Whether ``source`` leaves the first prompts to the teacher (``auto``: its head or default generator)."""
    return bool(getattr(source, "automatic", False))


@register_prompt_source("auto")
def _auto_source(arg: str | None) -> PromptSource:
    """The teacher's own automatic prompts: its prompt-free head or its default box generator
    (None tells `pseudo_label` to find them)."""
    if arg:
        raise PromptError(f"pseudo-label prompt source 'auto' takes no argument, got {arg!r}")

    def none(predictor: Any, ct: Any, name: str) -> None:
        return None
    none.automatic = True  # type: ignore[attr-defined]  (read by `is_automatic`)
    return none


@register_prompt_source("unet")
def _unet_source(arg: str | None) -> PromptSource:
    """A U-Net box generator read from ``PATH`` (`samliver.prompts.unet_boxes.load_box_generator`)."""
    if not arg:
        raise PromptError("pseudo-label prompt source 'unet' needs the U-Net file: unet:PATH")
    try:
        from .unet_boxes import load_box_generator
    except ImportError as exc:
        raise PromptError(f"pseudo-label prompt source unet:{arg}: the U-Net box generator is unavailable ({exc})")
    generator = load_box_generator(arg)

    def boxes(predictor: Any, ct: Any, name: str) -> VolumePrompts:
        from .generators import check_generated

        return check_generated(generator(np.asarray(ct.array, np.float32), tuple(ct.spacing)), ct.shape[0])
    return boxes


@register_prompt_source("files")
def _files_source(arg: str | None) -> PromptSource:
    """Given prompts: ``FOLDER/<case name>.json``, the prompts files of ``samliver segment --prompts-file``."""
    if not arg:
        raise PromptError("pseudo-label prompt source 'files' needs a folder: files:FOLDER")
    folder = Path(arg)
    if not folder.is_dir():
        raise PromptError(f"{folder}: no such prompts folder (pseudo-label prompt source files:{arg})")

    def read(predictor: Any, ct: Any, name: str) -> VolumePrompts:
        from .files import read_prompts_file

        return read_prompts_file(folder / f"{name}.json")

    def check(names: Sequence[str]) -> None:
        missing = next((folder / f"{n}.json" for n in names if not (folder / f"{n}.json").is_file()), None)
        if missing is not None:
            raise PromptError(f"{missing}: no prompts file for unlabelled case {missing.stem} "
                              f"(pseudo-label prompt source files:{arg} needs one <case>.json per unlabelled CT)")
    read.check = check  # type: ignore[attr-defined]  (read by `check_source`)
    return read
