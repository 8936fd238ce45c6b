"""``depth3d``: 3D depth adapters in the image encoder's blocks (in the spirit of MA-SAM).

The encoder sees stacks of D adjacent axial slices; after each chosen encoder block a small
bottleneck adapter (`DepthAdapter`) mixes every slice's tokens with its neighbours' through a
convolution across the depth axis. The base model is frozen; the adapters (and, by default, the
mask decoder) train. Up-projections start at zero, so the adapted model starts as the base.

Works for both families:

- SAM / MedSAM / samliver_tiny (segment_anything ViT): blocks ``sam.image_encoder.blocks``,
  one stage; adapter parameters ``sam.image_encoder.blocks.<i>.depth_adapter.*``.
- SAM 2 / MedSAM2 (transformers Hiera): blocks ``sam2.vision_encoder.backbone.blocks``, over all
  stages in order (Hiera-T: 1, 2, 7, 2 blocks). The first block of stages 1-3 pools its queries
  (its output has half the rows and columns and twice the channels of its input); the adapter
  acts on each block's *output*, so every block, pooling ones included, can carry one.
  Parameters ``sam2.vision_encoder.backbone.blocks.<i>.depth_adapter.*``.

Using an adapted model: ``model.stack_depth`` = D. ``model.encode(pixels)`` takes
``n_stacks * D`` images, stack after stack, and returns one embedding per image (each slice's
own, mixed with its stack neighbours). A stack dataset's ``(B, D, 3, S, S)`` pixels are passed
as ``pixels.flatten(0, 1)``. `samliver.inference.SliceEncoder` (and so `Predictor` and box
propagation) encodes each slice in the centre of its own stack (`samliver.inference.stack_indices`).

A SAM 2 model's memory propagation runs transformers' video model, which encodes one frame at a
time with a copy of the base weights and so can neither see stacks nor hold the adapters; an
adapted SAM 2 model's ``propagate`` therefore uses box propagation (as SAM / MedSAM do; the
strategy declares ``preserves_module_structure = False``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from torch import nn


from .base import AdapterError, Strategy, StrategyConfig, freeze, register_strategy
from .depth_adapter import ADAPTER_NAME, DepthAdapter, attach

BlockChoice = str | list[int]


@dataclasses.dataclass
class Depth3dConfig(StrategyConfig):
    """Settings of the ``depth3d`` strategy.

    Attributes:
        depth: slices D per stack (odd: the slice of interest sits in the middle).
        bottleneck: adapter bottleneck channels r.
        kernel_depth: extent of the depth convolution across slices (odd, at most ``depth``
            is useful; larger is allowed and zero-padded).
        kernel_spatial: extent across rows/columns: 1 (depth-only, ``(kd, 1, 1)``) or 3 (``(kd, 3, 3)``).
        blocks: which encoder blocks get an adapter: ``"all"``; a list of block indices (over all
            Hiera stages in order for SAM 2); or ``"stages:I,J"`` (``"stage:I"``), every block of
            those stages (the SAM ViT has one stage, 0).
        train_mask_decoder: also train the mask decoder.
        zero_init: zero the adapters' up-projections (the adapted model equals the base at init).
    """

    depth: int = 5
    bottleneck: int = 32
    kernel_depth: int = 3
    blocks: BlockChoice = "all"
    train_mask_decoder: bool = True
    zero_init: bool = True
    kernel_spatial: int = 1

    def __post_init__(self) -> None:
        for name in ("depth", "kernel_depth", "kernel_spatial"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1 and value % 2 == 1):
                raise AdapterError(f"depth3d {name}: need an odd integer >= 1, got {value!r}")
        if self.kernel_spatial not in (1, 3):
            raise AdapterError(f"depth3d kernel_spatial: 1 or 3, got {self.kernel_spatial!r}")
        if not (isinstance(self.bottleneck, int) and not isinstance(self.bottleneck, bool) and self.bottleneck >= 1):
            raise AdapterError(f"depth3d bottleneck: need an integer >= 1, got {self.bottleneck!r}")
        if isinstance(self.blocks, tuple):
            self.blocks = list(self.blocks)
        if not (isinstance(self.blocks, str) or (isinstance(self.blocks, list) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.blocks))):
            raise AdapterError(f"depth3d blocks: 'all', 'stages:I,J' or a list of block indices, got {self.blocks!r}")


@dataclasses.dataclass
class EncoderBlocks:
    """The token-to-token blocks of a model's image encoder.

    Attributes:
        blocks: the blocks, in forward order; each maps ``(B, H, W, C_in)`` to ``(B, H', W', C_out)``.
        out_dims: ``C_out`` of each block.
        stages: stage index of each block (all 0 for a plain ViT).
    """

    blocks: nn.ModuleList
    out_dims: list[int]
    stages: list[int]


def encoder_blocks(model: nn.Module) -> EncoderBlocks:
    """The image encoder blocks of a SAM-family (ViT) or SAM 2 (Hiera) `PromptableSegmenter`.

    Raises:
        AdapterError: ``model`` is neither.
    """
    from samliver.models.sam import SamSegmenter
    from samliver.models.sam2 import Sam2Segmenter

    if isinstance(model, SamSegmenter):
        blocks = model.sam.image_encoder.blocks
        return EncoderBlocks(blocks, [int(b.norm1.normalized_shape[0]) for b in blocks], [0] * len(blocks))
    if isinstance(model, Sam2Segmenter):
        backbone = model.sam2.vision_encoder.backbone
        stages = [s for s, n in enumerate(backbone.config.blocks_per_stage) for _ in range(n)]
        return EncoderBlocks(backbone.blocks, [int(b.dim_out) for b in backbone.blocks], stages)
    raise AdapterError(f"depth3d: needs a SAM-family (ViT) or SAM 2 (Hiera) image encoder; "
                       f"{type(model).__name__} is neither")


def select_blocks(choice: BlockChoice, found: EncoderBlocks) -> list[int]:
    """Indices of the blocks named by ``choice`` (see `Depth3dConfig.blocks`), sorted.

    Raises:
        AdapterError: an index or stage outside the encoder, or an empty choice.
    """
    n = len(found.blocks)
    if isinstance(choice, str):
        text = choice.strip().lower()
        if text == "all":
            return list(range(n))
        head, _, tail = text.partition(":")
        if head not in ("stage", "stages") or not tail:
            raise AdapterError(f"depth3d blocks: unknown choice {choice!r}; use 'all', 'stages:I,J' or block indices")
        try:
            wanted = {int(s) for s in tail.split(",")}
        except ValueError:
            raise AdapterError(f"depth3d blocks {choice!r}: stages must be integers") from None
        n_stages = max(found.stages) + 1
        bad = sorted(s for s in wanted if not 0 <= s < n_stages)
        if bad:
            raise AdapterError(f"depth3d blocks {choice!r}: stage(s) {bad} outside this encoder's "
                               f"stages 0..{n_stages - 1}")
        return [i for i, s in enumerate(found.stages) if s in wanted]
    chosen = sorted(set(choice))
    bad = [i for i in chosen if not 0 <= i < n]
    if bad or not chosen:
        raise AdapterError(f"depth3d blocks {choice!r}: need block indices in 0..{n - 1}")
    return chosen


@register_strategy
class Depth3dStrategy(Strategy):
    """3D depth adapters after the chosen encoder blocks; base frozen; sets ``model.stack_depth``.

    Trainable parameters (saved by the default `Strategy.trainable_state_dict`): per adapted
    block with output channels C, ``C*r + r + r*r*kd*ks*ks + r + r*C + C``; plus every mask
    decoder parameter with ``train_mask_decoder``.
    """

    name = "depth3d"
    preserves_module_structure: ClassVar[bool] = False
    config_class = Depth3dConfig

    def apply(self, model: nn.Module, config: Depth3dConfig) -> nn.Module:
        found = encoder_blocks(model)
        chosen = select_blocks(config.blocks, found)
        if any(hasattr(b, ADAPTER_NAME) for b in found.blocks):
            raise AdapterError("depth3d: this model already has depth adapters; apply depth3d to a bare base model")
        freeze(model)
        for i in chosen:
            block = found.blocks[i]
            reference = next(block.parameters())
            adapter = DepthAdapter(found.out_dims[i], config.bottleneck, config.depth, config.kernel_depth,
                                   config.kernel_spatial, config.zero_init)
            attach(block, adapter.to(device=reference.device, dtype=reference.dtype))
        if config.train_mask_decoder:
            for p in model.mask_decoder.parameters():
                p.requires_grad_(True)
        model.stack_depth = config.depth
        return model
