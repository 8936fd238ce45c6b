"""``lora``: low-rank adapters through peft on the image encoder's attention (fused ``qkv``,
optionally the output ``proj`` and the MLP) and optionally on the mask decoder's attention;
the mask decoder itself trains fully by default, as in SAMed.

peft does the work: `peft_config` translates our `LoraConfig` into ``peft.LoraConfig`` with
``target_modules`` = the exact names of the targeted ``nn.Linear`` layers, and
``peft.inject_adapter_in_model`` wraps them inside the upstream module (``model.sam`` for the
SAM family, ``model.sam2`` for SAM 2; see `upstream_module`). What peft lacks is ours: finding
the targets in two model families, freezing/unfreezing the mask decoder, saving the mask
decoder beside the LoRA tensors, and merging into a plain model for export (`merge_lora`).

Targets are found by module *class*, never by family name: `ENCODER_TARGETS` and
`DECODER_TARGETS` map each upstream class (segment_anything's ViT ``Attention`` and
``MLPBlock``, transformers' Hiera ``Sam2MultiScaleAttention`` and ``Sam2FeedForward``, and the
two decoders' attention classes) to the names of its ``nn.Linear`` children. A model built
from other classes is refused by `apply` with the classes it has and the ones it knows.

Saved tensors (`LoraStrategy.trainable_state_dict`), keys relative to the upstream module:

- LoRA: peft's own keys from ``peft.get_peft_model_state_dict`` (adapter name removed),
  e.g. ``image_encoder.blocks.0.attn.qkv.lora_A.weight`` (``rank x in``) and
  ``...qkv.lora_B.weight`` (``out x rank``); SAM 2: ``vision_encoder.backbone.blocks.N.attn.qkv.lora_A.weight``.
  ``peft.set_peft_model_state_dict`` loads them into an upstream module injected with
  ``peft.inject_adapter_in_model(peft_config(model, config), model.sam)``.
- every other trainable tensor (by default the mask decoder's): its name in the upstream
  module's own state dict, e.g. ``mask_decoder.iou_prediction_head.layers.0.weight``. These
  keys never contain ``lora_``; they are exactly the base checkpoint's keys.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .base import AdapterError, Strategy, StrategyConfig, freeze, register_strategy

if TYPE_CHECKING:  # peft is imported lazily: it pulls in transformers, slow to import
    import peft

__all__ = ["ADAPTER_NAME", "DECODER_TARGETS", "ENCODER_TARGETS", "LoraConfig", "LoraStrategy", "lora_layers",
           "lora_targets", "merge_lora", "peft_config", "upstream_module"]

#: peft's name for the one adapter a model carries.
ADAPTER_NAME = "default"

_SAM_VIT_ATTENTION = "segment_anything.modeling.image_encoder.Attention"
_SAM_MLP = "segment_anything.modeling.common.MLPBlock"
_SAM_DECODER_ATTENTION = "segment_anything.modeling.transformer.Attention"
_HIERA_ATTENTION = "transformers.models.sam2.modeling_sam2.Sam2MultiScaleAttention"
_HIERA_MLP = "transformers.models.sam2.modeling_sam2.Sam2FeedForward"
_SAM2_DECODER_ATTENTION = "transformers.models.sam2.modeling_sam2.Sam2Attention"

#: encoder target name -> {module class path: names of its ``nn.Linear`` children LoRA wraps}.
#: Searched only inside ``model.image_encoder`` (the decoders reuse some of these classes).
ENCODER_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "qkv": {_SAM_VIT_ATTENTION: ("qkv",), _HIERA_ATTENTION: ("qkv",)},
    "proj": {_SAM_VIT_ATTENTION: ("proj",), _HIERA_ATTENTION: ("proj",)},
    "mlp": {_SAM_MLP: ("lin1", "lin2"), _HIERA_MLP: ("proj_in", "proj_out")},
}
#: mask decoder attention classes -> their projections; searched inside ``model.mask_decoder``.
DECODER_TARGETS: dict[str, tuple[str, ...]] = {
    _SAM_DECODER_ATTENTION: ("q_proj", "k_proj", "v_proj", "out_proj"),
    _SAM2_DECODER_ATTENTION: ("q_proj", "k_proj", "v_proj", "o_proj"),
}


@dataclasses.dataclass
class LoraConfig(StrategyConfig):
    """Settings of the ``lora`` strategy (translated to ``peft.LoraConfig`` by `peft_config`).

    Attributes:
        rank: LoRA rank r (peft ``r``).
        alpha: scaling numerator; the update is ``(alpha / rank) * B @ A`` (peft ``lora_alpha``).
        dropout: dropout on the LoRA branch's input (peft ``lora_dropout``).
        encoder_targets: image-encoder layers to adapt, any of ``"qkv"`` (fused attention
            input projection), ``"proj"`` (attention output) and ``"mlp"`` (both MLP linears).
        decoder_lora: also adapt the mask decoder's attention projections (q, k, v, out).
        train_mask_decoder: train the mask decoder's own weights (as SAMed); the base weights of
            decoder layers wrapped by ``decoder_lora`` stay frozen, their LoRA trains instead.
        init_lora_weights: peft's ``init_lora_weights``: True (A random, B zero, so the adapted
            model starts equal to the base), False (B random too; tests), or a peft init name.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    encoder_targets: tuple[str, ...] = ("qkv",)
    decoder_lora: bool = False
    train_mask_decoder: bool = True
    init_lora_weights: bool | str = True

    def __post_init__(self) -> None:
        if isinstance(self.encoder_targets, str):
            self.encoder_targets = (self.encoder_targets,)
        self.encoder_targets = tuple(dict.fromkeys(self.encoder_targets))  # JSON gives a list; drop repeats
        unknown = [t for t in self.encoder_targets if t not in ENCODER_TARGETS]
        if unknown:
            raise AdapterError(f"lora: unknown encoder target(s) {unknown}; choose among {sorted(ENCODER_TARGETS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise AdapterError(f"lora: rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise AdapterError(f"lora: alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        if not self.encoder_targets and not self.decoder_lora:
            raise AdapterError("lora: nothing to adapt; give encoder_targets or set decoder_lora=True")


def upstream_module(model: nn.Module) -> nn.Module:
    """The wrapped upstream network of a `PromptableSegmenter` (``model.sam``, ``model.sam2``):
    the child module that holds both ``model.image_encoder`` and ``model.mask_decoder``.

    Raises:
        AdapterError: ``model`` has no such child.
    """
    parts = [getattr(model, "image_encoder", None), getattr(model, "mask_decoder", None)]
    if not all(isinstance(p, nn.Module) for p in parts):
        raise AdapterError(f"lora: {type(model).__name__} is not a promptable segmenter "
                           "(needs image_encoder and mask_decoder modules)")
    for child in model.children():
        inside = {id(m) for m in child.modules()}
        if all(id(p) in inside for p in parts):
            return child
    raise AdapterError(f"lora: {type(model).__name__} has no child module holding both its image "
                       "encoder and its mask decoder")


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _module_name(root: nn.Module, part: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is part)


def _linear_children(root: nn.Module, part: nn.Module, table: dict[str, tuple[str, ...]], what: str) -> list[str]:
    """Names (in ``root``) of the ``nn.Linear`` children that ``table`` lists for the modules of ``part``."""
    prefix = _module_name(root, part)
    names = []
    for name, module in part.named_modules():
        for child in table.get(_class_path(module), ()):
            layer = getattr(module, child, None)
            if not isinstance(layer, nn.Linear):
                raise AdapterError(f"lora: {what}: expected an nn.Linear {child!r} in {_class_path(module)}, "
                                   f"found {type(layer).__name__}")
            names.append(".".join(p for p in (prefix, name, child) if p))
    return names


def lora_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names, relative to `upstream_module`, of the ``nn.Linear`` layers ``config`` adapts.

    Raises:
        AdapterError: a requested target has no known module class in this model (the
            message names the model's encoder/decoder class and the classes lora knows).
    """
    root = upstream_module(model)
    names: list[str] = []
    jobs = [(model.image_encoder, ENCODER_TARGETS[t], f"encoder target {t!r}") for t in config.encoder_targets]
    if config.decoder_lora:
        jobs.append((model.mask_decoder, DECODER_TARGETS, "decoder_lora"))
    for part, table, what in jobs:
        found = _linear_children(root, part, table, what)
        if not found:
            model_name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
            raise AdapterError(f"lora: {what} cannot apply to {model_name}: its {type(part).__name__} holds none "
                               f"of the module classes lora knows ({', '.join(sorted(table))})")
        names += found
    return names


def peft_config(model: nn.Module, config: LoraConfig) -> "peft.LoraConfig":
    """``config`` as a ``peft.LoraConfig`` whose ``target_modules`` are `lora_targets` of ``model``."""
    import peft

    return peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=lora_targets(model, config), bias="none",
                           init_lora_weights=config.init_lora_weights)


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft-injected layers inside ``module``, by name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def _lora_parameter_ids(module: nn.Module) -> tuple[set[int], set[int]]:
    """ids of (LoRA parameters, wrapped base-layer parameters) inside ``module``."""
    lora, base = set(), set()
    for layer in lora_layers(module).values():
        wrapped = {id(p) for p in layer.get_base_layer().parameters()}
        base |= wrapped
        lora |= {id(p) for p in layer.parameters()} - wrapped
    return lora, base


def _other_trainable(root: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``root`` that are not LoRA's, by name (base-checkpoint names)."""
    lora, _ = _lora_parameter_ids(root)
    return {k: p for k, p in root.named_parameters() if p.requires_grad and id(p) not in lora}


@register_strategy
class LoraStrategy(Strategy):
    """LoRA through peft; see the module docstring for targets and the saved key layout."""

    name: ClassVar[str] = "lora"
    preserves_module_structure: ClassVar[bool] = False
    config_class: ClassVar[type[StrategyConfig]] = LoraConfig

    def apply(self, model: nn.Module, config: StrategyConfig) -> nn.Module:
        """Freeze ``model``, inject LoRA into `lora_targets`, and unfreeze the mask decoder
        (``train_mask_decoder``) except the base weights of layers LoRA wraps.

        Raises:
            AdapterError: a target cannot apply to this model, or LoRA is already injected.
        """
        from peft import inject_adapter_in_model

        if not isinstance(config, LoraConfig):
            raise AdapterError(f"lora: expected a LoraConfig, got {type(config).__name__}")
        root = upstream_module(model)
        if hasattr(root, "peft_config") or lora_layers(root):
            raise AdapterError("lora: this model already carries peft adapters; apply lora to a fresh base model")
        peft_cfg = peft_config(model, config)
        freeze(model)
        inject_adapter_in_model(peft_cfg, root, adapter_name=ADAPTER_NAME)
        lora, base = _lora_parameter_ids(root)
        for p in root.parameters():  # peft marks lora_ trainable; say so explicitly, whatever its defaults
            p.requires_grad_(id(p) in lora)
        if config.train_mask_decoder:
            for p in model.mask_decoder.parameters():
                if id(p) not in base:
                    p.requires_grad_(True)
        return model

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """peft's LoRA tensors plus the other trainable tensors (the mask decoder's), keyed as in
        the module docstring; detached, contiguous, on the CPU."""
        from peft import get_peft_model_state_dict

        root = upstream_module(model)
        state = dict(get_peft_model_state_dict(root, adapter_name=ADAPTER_NAME))
        state.update(_other_trainable(root))
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load `trainable_state_dict` output into an applied model: the LoRA part with
        ``peft.set_peft_model_state_dict``, the rest by strict copy.

        Raises:
            AdapterError: keys missing or unexpected, or a shape that does not fit.
        """
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        root = upstream_module(model)
        expected_lora = {k: v.shape for k, v in get_peft_model_state_dict(root, adapter_name=ADAPTER_NAME).items()}
        others = _other_trainable(root)
        expected = {**expected_lora, **{k: p.shape for k, p in others.items()}}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise AdapterError(f"adapter weights do not fit the lora strategy: missing {missing[:3]}"
                               f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                               f"{' ...' if len(unexpected) > 3 else ''}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key]):
                raise AdapterError(f"adapter tensor {key}: shape {tuple(value.shape)}, "
                                   f"model expects {tuple(expected[key])} (another rank or target?)")
        result = set_peft_model_state_dict(root, {k: state[k] for k in expected_lora}, adapter_name=ADAPTER_NAME)
        if result.unexpected_keys:
            raise AdapterError(f"peft did not place adapter tensors {sorted(result.unexpected_keys)[:3]}")
        with torch.no_grad():
            for key, param in others.items():
                param.copy_(state[key])


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge the LoRA updates into the base weights and remove the LoRA layers, in place.

    The result is a plain model: its upstream module's state dict has exactly the base
    checkpoint's keys (loadable by `samliver.models.checkpoints` / ``load_model(checkpoint=...)``).
    ``model.adapter`` is cleared, as the model no longer carries a separate adapter.

    Raises:
        AdapterError: ``model`` carries no LoRA layers.
    """
    root = upstream_module(model)
    layers = lora_layers(root)
    if not layers:
        raise AdapterError("lora: nothing to merge; the model carries no LoRA layers")
    for name, layer in layers.items():
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(root, "peft_config"):
        del root.peft_config
    if getattr(model, "adapter", None) is not None:
        model.adapter = None
    return model
