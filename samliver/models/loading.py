"""`load_model`: a registered model with weights from a checkpoint, the weights folders, or random."""

from __future__ import annotations

from pathlib import Path

import torch

from samliver.registry import get_spec

from .base import PromptableSegmenter
from .checkpoints import read_state_dict


def load_model(name: str, checkpoint: str | Path | None = None, adapter: str | Path | None = None,
               device: str | torch.device = "cpu") -> PromptableSegmenter:
    """Build model ``name`` and load its weights; returns it in eval mode on ``device``.

    Args:
        checkpoint: a checkpoint path (official ``.pth``/``.pt``, Hugging Face or plain
            safetensors); None looks for the spec's file in the weights folders
            (``$SAMLIVER_WEIGHTS``, the bundled ``weights/``, the user cache); ``"random"``
            keeps random weights (tests, benchmarks).
        adapter: a saved adapter folder to apply on top (see `samliver.adapters`).

    Raises:
        WeightsNotFoundError: no checkpoint given and the file is in no weights folder (the
            message names the file and the download command).
        CheckpointError: the file is unreadable or belongs to another architecture.
    """
    from samliver.weights_store import find_checkpoint, sha256_file

    spec = get_spec(name)
    model = spec.builder(spec)
    if isinstance(checkpoint, str) and checkpoint == "random":
        pass
    else:
        path = Path(checkpoint) if checkpoint is not None else find_checkpoint(name)
        model.load_weights(read_state_dict(path))
        model.checkpoint_sha256 = sha256_file(path)
    if adapter is not None:
        from samliver.adapters import load_adapter

        load_adapter(model, adapter)
    return model.to(device).eval()
