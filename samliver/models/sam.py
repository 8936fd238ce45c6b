"""SAM-family backbones (SAM ViT-B/L/H, MedSAM, the tiny test model) on Meta's
``segment_anything`` modules, composed unmodified and driven by our own forward."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from samliver.prompts import Prompts
from samliver.registry import ModelSpec

from . import fast_attention as _fast
from .base import DecoderOutput, ImageEmbedding, PromptableSegmenter, prompt_tensor


def build_sam_module(spec: ModelSpec) -> nn.Module:
    """A random-weight ``segment_anything.modeling.Sam`` from ``spec.options``.

    Options: ``embed_dim``, ``depth``, ``num_heads``, ``global_attn_indexes``, and optionally
    ``window_size`` (14), ``prompt_dim`` (256), ``decoder_mlp_dim`` (2048), ``decoder_heads`` (8),
    ``mask_in_chans`` (16). The image side is ``spec.input_size`` with 16-pixel patches.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    o = spec.options
    prompt_dim = o.get("prompt_dim", 256)
    grid = spec.input_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=spec.input_size, patch_size=16, embed_dim=o["embed_dim"], depth=o["depth"],
            num_heads=o["num_heads"], mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(o["global_attn_indexes"]),
            window_size=o.get("window_size", 14), out_chans=prompt_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(spec.input_size, spec.input_size), mask_in_chans=o.get("mask_in_chans", 16)),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=o.get("decoder_mlp_dim", 2048),
                                          num_heads=o.get("decoder_heads", 8)),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=o.get("iou_hidden_dim", 256)),
    )


class SamSegmenter(PromptableSegmenter):
    """A ``segment_anything`` ``Sam`` behind the `PromptableSegmenter` interface.

    The upstream module is ``self.sam``; its state-dict keys are the official ones
    (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).
    """

    #: `load_model(..., input_size=S)` may build it at another input size (see `samliver.models.input_size`)
    resizable_input = True

    def __init__(self, spec: ModelSpec, sam: nn.Module | None = None) -> None:
        super().__init__(spec)
        self.sam = build_sam_module(spec) if sam is None else sam
        self.sam.eval()
        # The encoder's attention runs through SDPA unless $SAMLIVER_FAST_ATTENTION=0 (see fast_attention).
        self.set_fast_attention(_fast.default_enabled())

    def set_fast_attention(self, enabled: bool) -> int:
        """Run the image encoder's attention through the fused SDPA path (`samliver.models.fast_attention`,
        equal to upstream in fp32 to roundoff) or upstream's own forward. Returns the modules switched."""
        switch = _fast.enable_fast_attention if enabled else _fast.disable_fast_attention
        return switch(self.sam.image_encoder)

    @property
    def fast_attention(self) -> bool:
        """Whether the image encoder's attention runs the SDPA fast path."""
        return any(_fast.fast_attention_on(m) for m in self.sam.image_encoder.modules())

    @property
    def image_encoder(self) -> nn.Module:
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam.mask_decoder

    def encode(self, pixels: torch.Tensor) -> ImageEmbedding:
        return ImageEmbedding(self.sam.image_encoder(pixels))

    def decode(self, embedding: ImageEmbedding, prompts: Prompts, image_size: tuple[int, int],
               multimask: bool = False) -> DecoderOutput:
        device = embedding.image_embeddings.device
        points = boxes = masks = None
        if prompts.points is not None:
            coords = prompt_tensor(self.convention.map_coords(prompts.points, image_size), device)
            points = (coords, prompt_tensor(prompts.point_labels, device))
        if prompts.boxes is not None:
            boxes = prompt_tensor(self.convention.map_boxes(prompts.boxes, image_size), device)
        if prompts.masks is not None:
            masks = prompt_tensor(prompts.masks, device)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        if prompts.tokens is not None:
            tokens = prompt_tensor(prompts.tokens, device, sparse.dtype)
            if sparse.shape[0] != tokens.shape[0]:  # token-only prompts: the encoder saw a batch of 1
                sparse = sparse.expand(tokens.shape[0], -1, -1)
                dense = dense.expand(tokens.shape[0], -1, -1, -1)
            sparse = torch.cat([sparse, tokens], dim=1)
        logits, iou = self.sam.mask_decoder(
            image_embeddings=embedding.image_embeddings,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return DecoderOutput(low_res_logits=logits, iou_scores=iou)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an official SAM/MedSAM state dict, or a Hugging Face ``SamModel`` one (converted)."""
        from .checkpoints import load_state_strict
        from .convert_hf_sam import hf_to_sam_state_dict, is_hf_sam_state_dict

        from .input_size import resize_state_dict

        if is_hf_sam_state_dict(state_dict):
            state_dict = hf_to_sam_state_dict(state_dict)
        load_state_strict(self.sam, resize_state_dict(state_dict, self.sam), self.spec.name)
