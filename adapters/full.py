"""``full``: MedSAM-style full fine-tuning.

Everything ``encode`` depends on (the image encoder; for SAM 2 also its ``no_memory_embedding``
and the mask decoder's ``conv_s0``/``conv_s1`` feature projections) and the whole mask decoder
train; the prompt encoder stays frozen unless ``train_prompt_encoder``. The saved adapter holds
every trained tensor, so it is about as large as the base checkpoint.

Example::

    apply_strategy(model, "full", {"train_prompt_encoder": False})
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Strategy, StrategyConfig, freeze, register_strategy
from .task_head import probe_encode, submodule


@dataclass
class FullConfig(StrategyConfig):
    """Config of the ``full`` strategy.

    Attributes:
        train_prompt_encoder: also train the prompt encoder (MedSAM keeps it frozen).
    """

    train_prompt_encoder: bool = False


def _unfreeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(True)


@register_strategy
class FullStrategy(Strategy):
    """Train the image encoder (the whole ``encode`` path) and the mask decoder."""

    name = "full"
    config_class = FullConfig

    def apply(self, model: nn.Module, config: FullConfig) -> nn.Module:
        """Unfreeze the image encoder, everything else ``encode`` uses, and the mask decoder; the
        prompt encoder trains only with ``train_prompt_encoder``; all else is frozen."""
        encoder, prompt_encoder, decoder = (submodule(model, n) for n in ("image_encoder", "prompt_encoder",
                                                                            "mask_decoder"))
        encode_params = probe_encode(model).parameters
        freeze(model)
        for name, p in model.named_parameters():
            if name in encode_params:
                p.requires_grad_(True)
        _unfreeze(encoder)
        _unfreeze(decoder)
        if config.train_prompt_encoder:
            _unfreeze(prompt_encoder)
        else:
            freeze(prompt_encoder)
        return model
