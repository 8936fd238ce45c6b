"""Official SAM 2 / MedSAM2 checkpoint keys -> Hugging Face transformers ``Sam2Model`` /
``Sam2VideoModel`` keys.

transformers does not ship its SAM 2 conversion script in the wheel, so this mapping is
written by hand from the two module trees (Meta's ``sam2.modeling`` and
``transformers.models.sam2`` / ``sam2_video``); `tests/test_sam2.py` checks it key-for-key
and numerically against Meta's own model. The tensors themselves are never changed, only
renamed, except two structural differences:

- Meta keeps the four point embeddings as ``sam_prompt_encoder.point_embeddings.{0..3}.weight``
  ``(1, C)`` each; transformers has one ``prompt_encoder.point_embed.weight`` ``(4, C)``.
- Meta's prompt encoder positional matrix ``pe_layer.positional_encoding_gaussian_matrix``
  ``(2, C/2)`` is held twice by transformers: ``prompt_encoder.shared_embedding`` and
  ``shared_image_embedding``.

Official checkpoints also hold the video-only parts (memory attention, memory encoder,
object pointers, temporal encodings); they map to ``Sam2VideoModel`` names and are split
off by `split_video_state`, because the image model ``Sam2Model`` has no place for them.
"""

from __future__ import annotations

import re

import torch

# Official key prefixes that exist only in the video model (not in Sam2Model).
OFFICIAL_VIDEO_PREFIXES: tuple[str, ...] = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "no_obj_embed_spatial", "mask_downsample.", "obj_ptr_proj.", "obj_ptr_tpos_proj.",
)
# The same parts under transformers ``Sam2VideoModel`` names.
HF_VIDEO_PREFIXES: tuple[str, ...] = (
    "memory_attention.", "memory_encoder.", "memory_temporal_positional_encoding",
    "no_memory_positional_encoding", "no_object_pointer", "occlusion_spatial_embedding_parameter",
    "mask_downsample.", "object_pointer_proj.", "temporal_positional_encoding_projection_layer.",
)
# Keys that only an official SAM 2 checkpoint has (a SAM ViT checkpoint has none of them).
_OFFICIAL_MARKERS = ("image_encoder.trunk.", "sam_mask_decoder.", "sam_prompt_encoder.")

# Key renames (regex -> replacement), applied in order; a rule sees the result of the ones before.
_RENAMES: list[tuple[str, str]] = [
    # --- scalars / embeddings at the top level
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    # --- image encoder: Hiera trunk + FPN neck
    (r"^image_encoder\.trunk\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.norm(\d)\.", r"vision_encoder.backbone.blocks.\1.layer_norm\2."),
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    # --- prompt encoder (point embeddings and the positional matrix are handled separately)
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    # --- mask decoder
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    # --- memory attention (video)
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"^memory_attention\.layers\.(\d+)\.norm(\d)\.", r"memory_attention.layers.\1.layer_norm\2."),
    # --- memory encoder (video)
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.out_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.", "memory_encoder.memory_fuser."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.gamma$", r"\1.scale"),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.dwconv\.", r"\1.depthwise_conv."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.norm\.", r"\1.layer_norm."),
    (r"^(memory_encoder\.memory_fuser\.layers\.\d+)\.pwconv(\d)\.", r"\1.pointwise_conv\2."),
]
# Attention output projections: Meta ``out_proj`` -> transformers ``o_proj`` (decoder and memory attention).
_ATTN_OUT = re.compile(r"^((?:mask_decoder\.transformer|memory_attention)\..*attn[a-z_]*)\.out_proj\.")
# Multi-layer perceptrons: Meta ``layers.{0..L-1}`` -> transformers ``proj_in``, ``layers.{0..L-3}``, ``proj_out``.
_MLP = re.compile(r"^(.*\.mlp|.*\.output_hypernetworks_mlps\.\d+|.*\.iou_prediction_head|.*\.pred_obj_score_head"
                  r"|object_pointer_proj)\.layers\.(\d+)\.(weight|bias)$")
# Memory encoder mask downsampler: Meta ``encoder.{3i}`` conv, ``{3i+1}`` norm, last index the final 1x1 conv.
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(weight|bias)$")
_POINT_EMBED = re.compile(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$")
_PE_MATRIX = "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def is_official_sam2_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True if ``state_dict`` uses Meta's SAM 2 key names (``image_encoder.trunk.*``, ``sam_mask_decoder.*``, ...)."""
    return any(k.startswith(_OFFICIAL_MARKERS) for k in state_dict)


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return _ATTN_OUT.sub(r"\1.o_proj.", key)


def official_to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official SAM 2 state dict into transformers ``Sam2VideoModel`` keys.

    The image part gets exactly ``Sam2Model``'s keys; video-only parts get ``Sam2VideoModel``'s.
    Keys this mapping does not know are passed through unchanged, so a strict load names them.
    """
    renamed: dict[str, torch.Tensor] = {}
    points: dict[int, torch.Tensor] = {}
    for key, value in state_dict.items():
        if (m := _POINT_EMBED.match(key)) is not None:
            points[int(m.group(1))] = value
        elif key == _PE_MATRIX:
            renamed["prompt_encoder.shared_embedding.positional_embedding"] = value
            renamed["shared_image_embedding.positional_embedding"] = value
        else:
            renamed[_rename(key)] = value
    if points:
        renamed["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    return _renumber_layers(renamed)


def _renumber_layers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLP and mask-downsampler layer indices, which depend on each stack's depth."""
    mlp_depth: dict[str, int] = {}
    down_last = -1
    for key in state_dict:
        if (m := _MLP.match(key)) is not None:
            mlp_depth[m.group(1)] = max(mlp_depth.get(m.group(1), 0), int(m.group(2)) + 1)
        elif (m := _DOWNSAMPLER.match(key)) is not None:
            down_last = max(down_last, int(m.group(1)))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if (m := _MLP.match(key)) is not None:
            prefix, i, kind = m.group(1), int(m.group(2)), m.group(3)
            depth = mlp_depth[prefix]
            layer = "proj_in" if i == 0 else "proj_out" if i == depth - 1 else f"layers.{i - 1}"
            key = f"{prefix}.{layer}.{kind}"
        elif (m := _DOWNSAMPLER.match(key)) is not None:
            i, kind = int(m.group(1)), m.group(2)
            if i == down_last:
                layer = "final_conv"
            elif i % 3 == 0:
                layer = f"layers.{i // 3}.conv"
            elif i % 3 == 1:
                layer = f"layers.{i // 3}.layer_norm"
            else:  # Meta's activations have no weights; an index here is not a SAM 2 downsampler
                layer = f"encoder.{i}"
            key = f"memory_encoder.mask_downsampler.{layer}.{kind}"
        out[key] = value
    return out


def split_video_state(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a transformers-named state dict into ``(image part, video-only part)``.

    The image part is what ``Sam2Model`` holds; the video-only part is memory attention,
    memory encoder, object-pointer and temporal-encoding weights (``HF_VIDEO_PREFIXES``).
    """
    image = {k: v for k, v in state_dict.items() if not k.startswith(HF_VIDEO_PREFIXES)}
    video = {k: v for k, v in state_dict.items() if k.startswith(HF_VIDEO_PREFIXES)}
    return image, video
