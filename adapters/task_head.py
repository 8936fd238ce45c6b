"""The prompt-free multi-class head of the `decoder` strategy, and the encoder probe that sizes it.

`probe_encode` finds, for any `PromptableSegmenter`, which parameters its ``encode`` depends
on and the shapes of the `ImageEmbedding` it returns, by tracing ``encode`` on the meta device
(shapes only, no arithmetic). Strategies use it instead of naming model families: SAM's
``encode`` is its ViT image encoder; SAM 2's is the Hiera encoder with its FPN neck *plus* the
mask decoder's ``conv_s0``/``conv_s1`` projections and the learned ``no_memory_embedding``.

`MulticlassHead` maps the frozen features to ``num_classes`` logits at the model's low-res
mask size (S/4); it is attached as ``model.task_head`` and called by `head_logits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from samliver.models.base import ImageEmbedding

from .base import AdapterError

#: The sub-modules every strategy may address, as properties of each model wrapper.
SUBMODULES = ("image_encoder", "prompt_encoder", "mask_decoder")


class NoTaskHeadError(AdapterError):
    """Prompt-free segmentation asked of a model that has no prompt-free head."""


@dataclass(frozen=True)
class EncodeProbe:
    """What ``model.encode`` reads and returns.

    Attributes:
        image_embeddings: shape ``(1, C, h, w)`` of ``ImageEmbedding.image_embeddings`` for one image.
        high_res_features: shapes ``(1, C_i, h_i, w_i)`` of the finer maps; ``()`` where there are none.
        parameters: names (as in ``model.named_parameters()``) of every parameter ``encode`` depends on.
    """

    image_embeddings: torch.Size
    high_res_features: tuple[torch.Size, ...]
    parameters: frozenset[str]


class _Encode(nn.Module):
    """``model.encode`` as a module forward, so `functional_call` can swap its parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        emb = self.model.encode(pixels)
        return (emb.image_embeddings, *(emb.high_res_features or ()))


def _trace(model: nn.Module, meta: bool) -> EncodeProbe:
    wrapper = _Encode(model)
    named = dict(wrapper.named_parameters())
    if meta:
        params = {n: torch.empty_like(p, device="meta").requires_grad_(True) for n, p in named.items()}
        buffers = {n: torch.empty_like(b, device="meta") for n, b in wrapper.named_buffers()}
        device = torch.device("meta")
    else:  # shares storage with the model; only the gradient flag differs
        params = {n: p.detach().requires_grad_(True) for n, p in named.items()}
        buffers = {}
        device = model.device
    dtype = next(iter(named.values())).dtype
    images = int(getattr(model, "stack_depth", 1))  # a stack model encodes whole stacks of D slices
    pixels = torch.zeros(images, 3, model.input_size, model.input_size, device=device, dtype=dtype)
    with torch.enable_grad():
        outs = functional_call(wrapper, {**params, **buffers}, (pixels,), strict=False)
        total = sum(o.float().sum() for o in outs)
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    used = frozenset(n.removeprefix("model.") for n, g in zip(params, grads) if g is not None)
    return EncodeProbe(outs[0].shape, tuple(o.shape for o in outs[1:]), used)


def probe_encode(model: nn.Module) -> EncodeProbe:
    """Trace ``model.encode`` on one ``(1, 3, S, S)`` image (one stack of D for a stack model):
    which parameters it uses, and the shapes it returns.

    Runs on the meta device (shapes only, a fraction of a second even for ViT-H); falls back to a
    real forward on the model's device if some operation has no meta implementation. The model's
    weights are untouched either way.

    Raises:
        AdapterError: ``encode`` cannot be traced at all.
    """
    errors = []
    for meta in (True, False):
        try:
            return _trace(model, meta)
        except Exception as exc:  # noqa: BLE001  (any failure of the meta trace means: try for real)
            errors.append(f"{type(exc).__name__}: {exc}")
    raise AdapterError(f"cannot trace {type(model).__name__}.encode to find its parameters ({errors[-1]})")


def submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.<name>`` for ``name`` in `SUBMODULES`, or AdapterError saying the wrapper lacks it."""
    module = getattr(model, name, None)
    if not isinstance(module, nn.Module):
        raise AdapterError(f"{type(model).__name__} has no {name!r} sub-module property; strategies need "
                           f"{', '.join(SUBMODULES)} on every model wrapper")
    return module


class _EvalOnly:
    """A module's ``train`` that keeps it in eval mode (a picklable, deep-copyable callable)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def hold_eval(module: nn.Module) -> None:
    """Put ``module`` in eval mode and keep it there through later ``model.train()`` calls
    (a frozen encoder must not switch dropout / drop-path on when the trainer trains the rest)."""
    module.train = _EvalOnly(module)
    module.eval()


class MulticlassHead(nn.Module):
    """A small prompt-free segmentation head on frozen encoder features.

    ``image_embeddings`` ``(B, C, h, w)`` -> two 3x3 conv + GroupNorm + GELU at ``channels`` ->
    two x2 transposed-conv upsamplings (as SAM's mask decoder upscales), each optionally adding a
    1x1 projection of the high-resolution feature map of that size (SAM 2's ``high_res_features``)
    -> 1x1 conv to ``num_classes`` logits ``(B, num_classes, 4h, 4w)``.

    Args:
        in_channels: C of ``image_embeddings``.
        num_classes: output classes (3: background, liver, tumour).
        channels: width of the head.
        skips: per upsampling stage, ``(index into high_res_features, its channels)`` or None.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int,
                 skips: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)) -> None:
        super().__init__()
        groups = math.gcd(8, channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.GELU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.GELU())
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.GroupNorm(groups, channels),
                          nn.GELU())
            for _ in range(2))
        self.skip_index = tuple(None if s is None else s[0] for s in skips)
        self.skip = nn.ModuleList(nn.Identity() if s is None else nn.Conv2d(s[1], channels, 1) for s in skips)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    @classmethod
    def for_probe(cls, probe: EncodeProbe, num_classes: int, channels: int,
                  use_high_res: bool | None) -> "MulticlassHead":
        """A head sized for the embeddings ``probe`` describes.

        ``use_high_res``: True needs high-resolution maps at 2h and 4h (AdapterError otherwise),
        None uses them where the encoder gives them, False ignores them.
        """
        _, c, h, w = probe.image_embeddings
        skips: list[tuple[int, int] | None] = []
        for factor in (2, 4):
            match = [(i, s[1]) for i, s in enumerate(probe.high_res_features)
                     if tuple(s[-2:]) == (h * factor, w * factor)]
            skips.append(match[0] if match and use_high_res is not False else None)
        if use_high_res and None in skips:
            have = [tuple(s[1:]) for s in probe.high_res_features] or "none"
            raise AdapterError(f"use_high_res: the encoder gives no high-resolution features of sizes "
                               f"{(h * 2, w * 2)} and {(h * 4, w * 4)} (it gives {have}); "
                               "set use_high_res to null or false")
        return cls(c, num_classes, channels, (skips[0], skips[1]))

    def forward(self, embedding: ImageEmbedding) -> torch.Tensor:
        """`ImageEmbedding` of B images -> logits ``(B, num_classes, 4h, 4w)`` (the low-res mask size)."""
        x = self.stem(embedding.image_embeddings)
        for up, skip, index in zip(self.up, self.skip, self.skip_index):
            x = up(x)
            if index is not None:
                x = x + skip(embedding.high_res_features[index])
        return self.classifier(x)


def require_task_head(model: nn.Module) -> nn.Module:
    """``model.task_head``, the prompt-free head that maps an `ImageEmbedding` of B images to
    logits ``(B, K, h, w)`` at the low-res mask size.

    Raises:
        NoTaskHeadError: the model has no prompt-free head (one line, saying what is needed).
    """
    head = getattr(model, "task_head", None)
    if head is None:
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise NoTaskHeadError(f"{name} has no prompt-free head: automatic segmentation needs a 'decoder' "
                              "adapter with head: multiclass (or, later, automatic prompts)")
    return head


def head_logits(model: nn.Module, embedding: ImageEmbedding) -> torch.Tensor:
    """``model.task_head(embedding)``: logits ``(B, K, h, w)``; NoTaskHeadError without a head."""
    return require_task_head(model)(embedding)
