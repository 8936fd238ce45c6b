"""SAM 2.x (Hiera) and MedSAM2 backbones on Hugging Face transformers' ``Sam2Model``,
composed unmodified and driven by our own forward (gradients allowed).

The forward reproduces what Meta's ``SAM2ImagePredictor`` computes: the FPN's two finest
levels projected by the mask decoder's ``conv_s0``/``conv_s1``, the learned "no memory"
embedding added to the coarsest level (``directly_add_no_mem_embed``), box corners encoded
as points with labels 2/3 placed before the clicks, and a padding point after them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from samliver.errors import PromptError
from samliver.prompts import Prompts
from samliver.registry import ModelSpec

from .base import DecoderOutput, ImageEmbedding, PromptableSegmenter, prompt_tensor

# Point labels of Meta's prompt encoder for the two box corners.
_BOX_LABELS = (2, 3)


def _sub_configs(spec: ModelSpec) -> dict:
    """Vision, prompt-encoder and mask-decoder configs (transformers objects) for ``spec``.

    ``spec.options`` (names as in Meta's ``sam2.1_hiera_*.yaml``): ``embed_dim``, ``num_heads``,
    ``stages``, ``global_att_blocks``, ``window_spec``, ``window_pos_embed_bkg_spatial_size``,
    ``backbone_channel_list``; optionally ``d_model`` (256), ``fpn_top_down_levels`` ([2, 3]).
    """
    from transformers import Sam2HieraDetConfig, Sam2MaskDecoderConfig, Sam2PromptEncoderConfig, Sam2VisionConfig

    o, size = spec.options, spec.input_size
    dim, heads = int(o["embed_dim"]), int(o["num_heads"])
    d_model = int(o.get("d_model", 256))
    backbone = Sam2HieraDetConfig(
        hidden_size=dim, num_attention_heads=heads, image_size=[size, size],
        blocks_per_stage=list(o["stages"]),
        embed_dim_per_stage=[dim * 2 ** i for i in range(len(o["stages"]))],
        num_attention_heads_per_stage=[heads * 2 ** i for i in range(len(o["stages"]))],
        window_size_per_stage=list(o["window_spec"]),
        global_attention_blocks=list(o["global_att_blocks"]),
        window_positional_embedding_background_size=list(o["window_pos_embed_bkg_spatial_size"]))
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=list(o["backbone_channel_list"]),
        backbone_feature_sizes=[[size // s, size // s] for s in (4, 8, 16)], fpn_hidden_size=d_model,
        fpn_top_down_levels=list(o.get("fpn_top_down_levels", (2, 3))))
    prompt = Sam2PromptEncoderConfig(hidden_size=d_model, image_size=size, patch_size=16)
    decoder = Sam2MaskDecoderConfig(hidden_size=d_model)
    return dict(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_sam2_config(spec: ModelSpec):
    """The transformers ``Sam2Config`` of ``spec`` (see `_sub_configs` for the options)."""
    from transformers import Sam2Config

    return Sam2Config(**_sub_configs(spec))


class Sam2Segmenter(PromptableSegmenter):
    """A transformers ``Sam2Model`` (``self.sam2``) behind the `PromptableSegmenter` interface.

    ``load_weights`` reads official SAM 2 / MedSAM2 checkpoints (converted by
    `samliver.models.convert_sam2`) and Hugging Face ``Sam2Model``/``Sam2VideoModel`` state
    dicts. The video-only weights of a checkpoint (memory attention / encoder, object
    pointers) are kept in ``video_state`` for `propagate` (`samliver.models.sam2_video`).
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        from transformers import Sam2Model

        self.sam2 = Sam2Model(build_sam2_config(spec))
        self.sam2.eval()
        #: video-only tensors in ``Sam2VideoModel`` names (None: random, from the video model's init)
        self.video_state: dict[str, torch.Tensor] | None = None

    @property
    def image_encoder(self) -> nn.Module:
        return self.sam2.vision_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.sam2.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.sam2.mask_decoder

    def encode(self, pixels: torch.Tensor) -> ImageEmbedding:
        """Pixels ``(B, 3, S, S)`` -> ``image_embeddings`` ``(B, 256, S/16, S/16)`` and
        ``high_res_features`` ``((B, 32, S/4, S/4), (B, 64, S/8, S/8))``.

        As Meta's ``SAM2ImagePredictor.set_image`` (and transformers' ``@no_grad``
        ``get_image_embeddings``): the two finest FPN levels go through the mask decoder's
        ``conv_s0``/``conv_s1``, and ``no_memory_embedding`` is added to the coarsest level.
        """
        model = self.sam2
        fpn = model.vision_encoder(pixels).fpn_hidden_states  # fine -> coarse, each (B, 256, h, w)
        s0 = model.mask_decoder.conv_s0(fpn[0])
        s1 = model.mask_decoder.conv_s1(fpn[1])
        coarse = fpn[-1] + model.no_memory_embedding.reshape(1, -1, 1, 1)
        return ImageEmbedding(coarse, (s0, s1))

    def point_inputs(self, prompts: Prompts, image_size: tuple[int, int],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Box corners (labels 2, 3) then clicks, as Meta's predictors order them: coords
        ``(N, 1, K, 2)`` in model-input pixels, labels ``(N, 1, K)``; None without boxes and points."""
        coords, labels = [], []
        n = len(prompts)
        if prompts.boxes is not None:
            coords.append(self.convention.map_boxes(prompts.boxes, image_size).reshape(n, 2, 2))
            labels.append(np.broadcast_to(np.array(_BOX_LABELS, np.int64), (n, 2)))
        if prompts.points is not None:
            coords.append(self.convention.map_coords(prompts.points, image_size))
            labels.append(prompts.point_labels.astype(np.int64))
        if not coords:
            return None
        xy = prompt_tensor(np.concatenate(coords, axis=1), device, torch.float32)
        lab = prompt_tensor(np.concatenate(labels, axis=1), device)
        return xy[:, None], lab[:, None]

    def decode(self, embedding: ImageEmbedding, prompts: Prompts, image_size: tuple[int, int],
               multimask: bool = False) -> DecoderOutput:
        """N objects of one image -> ``low_res_logits`` ``(N, M, S/4, S/4)``, ``iou_scores`` ``(N, M)``.

        M = 3 with ``multimask``; otherwise 1, where (in eval mode, as Meta's decoder) a
        single-mask output whose stability score is below 0.98 is replaced by the best of
        the three multimask outputs (``dynamic_multimask_via_stability``). Objects form the
        decoder's batch, so each may carry its own mask input (``prompts.masks``
        ``(N, 1, S/4, S/4)`` logits). ``prompts.tokens`` ``(N, T, 256)`` are appended to the
        sparse prompt embeddings.
        """
        model = self.sam2
        image = embedding.image_embeddings
        device, dtype = image.device, image.dtype
        n = len(prompts)
        points = self.point_inputs(prompts, image_size, device)
        masks = None
        if prompts.masks is not None:
            if prompts.masks.shape[-2:] != (self.low_res_size, self.low_res_size):
                raise PromptError(f"masks: expected (N, 1, {self.low_res_size}, {self.low_res_size}) low-res "
                                  f"logits for {self.spec.name}, got shape {prompts.masks.shape}")
            masks = prompt_tensor(prompts.masks, device, dtype)
        sparse, dense = model.prompt_encoder(
            input_points=None if points is None else points[0], input_labels=None if points is None else points[1],
            input_boxes=None, input_masks=masks)
        if sparse is None:  # no boxes/points: like Meta, no sparse prompt at all (not even a padding point)
            sparse = image.new_zeros(n, 1, 0, model.config.prompt_encoder_config.hidden_size)
        if prompts.tokens is not None:
            tokens = prompt_tensor(prompts.tokens, device, sparse.dtype)
            sparse = torch.cat([sparse, tokens[:, None]], dim=2)
        dense = dense.expand(n, -1, -1, -1)
        pe = model.get_image_wide_positional_embeddings().expand(n, -1, -1, -1)
        high_res = [f.expand(n, -1, -1, -1) for f in embedding.high_res_features]
        logits, iou, _, _ = model.mask_decoder(
            image_embeddings=image.expand(n, -1, -1, -1), image_positional_embeddings=pe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask, high_resolution_features=high_res)
        return DecoderOutput(low_res_logits=logits[:, 0], iou_scores=iou[:, 0])

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an official SAM 2 / MedSAM2 state dict (converted) or a Hugging Face one, strictly.

        Video-only tensors (``convert_sam2.HF_VIDEO_PREFIXES`` after conversion: memory
        attention, memory encoder, object pointers, temporal encodings) are dropped from the
        image model and kept in ``self.video_state`` for `propagate`.
        """
        from .checkpoints import load_state_strict
        from .convert_sam2 import is_official_sam2_state_dict, official_to_hf_state_dict, split_video_state

        if is_official_sam2_state_dict(state_dict):
            state_dict = official_to_hf_state_dict(state_dict)
        image, video = split_video_state(state_dict)
        load_state_strict(self.sam2, image, self.spec.name)
        self.video_state = video or None
        self.__dict__.pop("_video_model", None)  # a cached video model holds the old memory weights

    def propagate(self, hu_volume: np.ndarray, key_slice: int, prompts: Prompts,
                  window: tuple[float, float] | None = None) -> np.ndarray:
        """3D segmentation with SAM 2's memory (transformers ``Sam2VideoModel``), forward and
        backward from ``key_slice``; see `samliver.models.sam2_video.propagate_video`.

        With an adapter that injects modules (LoRA, depth adapters) the video model cannot hold
        the adapted weights, so box propagation is used instead, with a warning."""
        from samliver.adapters import get_strategy

        from .sam2_video import propagate_video

        adapter = getattr(self, "adapter", None)
        if adapter and not get_strategy(adapter["strategy"]).preserves_module_structure:
            warnings.warn(f"{self.spec.name} with a {adapter['strategy']} adapter: SAM 2's video memory cannot "
                          "hold the adapted weights; propagating boxes slice by slice instead", stacklevel=2)
            return super().propagate(hu_volume, key_slice, prompts, window)
        return propagate_video(self, hu_volume, key_slice, prompts, window)
