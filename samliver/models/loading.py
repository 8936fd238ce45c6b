"""`load_model`: a registered model with weights from a checkpoint, the weights folders, or random."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from samliver.errors import SamliverError
from samliver.registry import ModelSpec, get_spec

from .base import PromptableSegmenter
from .checkpoints import read_state_dict


class InputSizeError(SamliverError, ValueError):
    """``load_model(..., input_size=...)`` with a size the model cannot take (the message says why)."""


def load_model(name: str, checkpoint: str | Path | None = None, adapter: str | Path | None = None,
               device: str | torch.device = "cpu", fast_attention: bool | None = None,
               input_size: int | None = None) -> PromptableSegmenter:
    """Build model ``name`` and load its weights; returns it in eval mode on ``device``.

    Args:
        checkpoint: a checkpoint path (official ``.pth``/``.pt``, Hugging Face or plain
            safetensors); None looks for the spec's file in the weights folders
            (``$SAMLIVER_WEIGHTS``, the bundled ``weights/``, the user cache); ``"random"``
            keeps random weights (tests, benchmarks).
        adapter: a saved adapter folder to apply on top (see `samliver.adapters`); ``"default"``: the
            model's registered default, the one ``samliver segment --auto`` applies (for ``samliver_tiny``
            the shipped liver-tumour LoRA, `samliver.prompts.generators.default_adapter`).
        fast_attention: run the SAM encoder's attention through the SDPA fast path (True), upstream's
            forward (False), or as ``$SAMLIVER_FAST_ATTENTION`` says (None: on unless it is ``0``).
        input_size: build the model at this square input side in pixels (a multiple of 16) instead of
            the spec's, a speed/accuracy trade-off for SAM-family models (`samliver.models.input_size`);
            the checkpoint's position embeddings are resized to it.

    Raises:
        WeightsNotFoundError: no checkpoint given and the file is in no weights folder (the
            message names the file and the download command).
        CheckpointError: the file is unreadable or belongs to another architecture.
        InputSizeError: ``input_size`` is not a positive multiple of 16, or the family cannot change it.
        AdapterError: the adapter does not fit, or ``"default"`` for a model without an installed one.
    """
    from samliver.weights_store import find_checkpoint, sha256_file

    spec = get_spec(name)
    if input_size is not None and input_size != spec.input_size:
        spec = _resized_spec(spec, input_size)
    model = spec.builder(spec)
    if fast_attention is not None:
        model.set_fast_attention(fast_attention)
    if isinstance(checkpoint, str) and checkpoint == "random":
        pass
    else:
        path = Path(checkpoint) if checkpoint is not None else find_checkpoint(name)
        model.load_weights(read_state_dict(path))
        model.checkpoint_sha256 = sha256_file(path)
    if adapter is not None:
        from samliver.adapters import load_adapter

        load_adapter(model, _default_adapter(name) if str(adapter) == "default" else adapter)
    return model.to(device).eval()


def _default_adapter(name: str) -> Path:
    """The installed default adapter folder of model ``name``; AdapterError where there is none."""
    from samliver.adapters import AdapterError
    from samliver.prompts.generators import default_adapter

    folder = default_adapter(name)
    if folder is None:
        raise AdapterError(f"adapter 'default': model {name} has no default adapter")
    if not folder.is_dir():
        raise AdapterError(f"adapter 'default': {folder}, the default adapter of {name}, is not installed")
    return folder


def _resized_spec(spec: ModelSpec, input_size: int) -> ModelSpec:
    """``spec`` at another input side; raises InputSizeError where that cannot be."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 16 or input_size % 16:
        raise InputSizeError(f"input_size: need a positive multiple of 16 pixels, got {input_size!r}")
    if not getattr(spec.builder, "resizable_input", False):
        raise InputSizeError(f"input_size: {spec.name} runs only at its own input size, {spec.input_size} px")
    return dataclasses.replace(spec, input_size=input_size)
