"""Hugging Face ``transformers`` ``SamModel`` state dicts -> Meta ``segment_anything`` ``Sam`` ones.

Checkpoints such as ``facebook/sam-vit-base`` or MedSAM's HF export
(``flaviagiammarino/medsam-vit-base``) hold a ``SamModel`` state dict. Our SAM-family
wrappers compose Meta's unmodified ``Sam``, so those keys are renamed here.

The key mapping is written by hand: transformers ships only a script for the other
direction (official -> HF), and not inside the wheel, so there is nothing to import.

What differs between the two layouts (everything else is a 1:1 rename, same tensor):

- the two-way MLPs (hypernetworks, IoU head) are ``proj_in``/``layers.i``/``proj_out`` in HF
  and a flat ``layers.0..n-1`` in Meta's ``MLP``, so ``proj_out``'s index depends on the depth;
- ``nn.Sequential`` indices in Meta's code (image-encoder neck, mask downscaling, output
  upscaling) are named modules in HF;
- HF keeps the random Fourier matrix twice (``shared_image_embedding`` and its tie
  ``prompt_encoder.shared_embedding``); Meta keeps it once, as the buffer
  ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix``. The values are stored
  identically (both compute ``(2c - 1) @ G``), so no rescaling: HF's ``config.scale``
  only sets its random initialisation.
- nothing needs reshaping: ``pos_embed`` is ``(1, h, w, C)`` in both, ``qkv`` is fused in
  both, and ``rel_pos_h/w`` are ``(2 * size - 1, head_dim)`` in both. Meta's ``pixel_mean``
  and ``pixel_std`` buffers are non-persistent, so HF having no such tensors is fine;
  ``SamModel`` has no buffers of its own, so the tied copy is the only HF-only tensor dropped.

Numerics: transformers' two-way-transformer LayerNorms use ``layer_norm_eps`` (1e-6) where
Meta's use torch's 1e-5, so a converted model reproduces Meta's original decoder and its
logits can differ slightly from transformers' ``SamModel``; the encoders agree to roundoff.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from samliver.errors import CheckpointError

_ROOTS = ("vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding")
# Keys only a SAM (v1) SamModel has: SAM 2's HF model uses vision_encoder.backbone.* and a
# single prompt_encoder.point_embed Embedding, so it is not mistaken for one.
_MARKER = re.compile(r"^(vision_encoder\.(patch_embed\.projection|layers\.\d+|neck\.conv1)\.|"
                     r"prompt_encoder\.point_embed\.\d+\.)")
_PREFIX = re.compile(r"^((?:\w+\.)*?)(?:%s)\." % "|".join(_ROOTS))
_PE_KEYS = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")
_PE_TARGET = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_WB = r"\.(weight|bias)$"

# (HF full-key pattern, Meta replacement). Every pattern is anchored, so unknown keys stay unmatched.
_RENAMES: list[tuple[re.Pattern, str]] = [(re.compile(p), r) for p, r in [
    # image encoder (ViT)
    (r"^vision_encoder\.pos_embed$", "image_encoder.pos_embed"),
    (r"^vision_encoder\.patch_embed\.projection" + _WB, r"image_encoder.patch_embed.proj.\1"),
    (r"^vision_encoder\.layers\.(\d+)\.layer_norm([12])" + _WB, r"image_encoder.blocks.\1.norm\2.\3"),
    (r"^vision_encoder\.layers\.(\d+)\.attn\.(rel_pos_[hw])$", r"image_encoder.blocks.\1.attn.\2"),
    (r"^vision_encoder\.layers\.(\d+)\.attn\.(qkv|proj)" + _WB, r"image_encoder.blocks.\1.attn.\2.\3"),
    (r"^vision_encoder\.layers\.(\d+)\.mlp\.(lin[12])" + _WB, r"image_encoder.blocks.\1.mlp.\2.\3"),
    (r"^vision_encoder\.neck\.conv1\.weight$", "image_encoder.neck.0.weight"),
    (r"^vision_encoder\.neck\.layer_norm1" + _WB, r"image_encoder.neck.1.\1"),
    (r"^vision_encoder\.neck\.conv2\.weight$", "image_encoder.neck.2.weight"),
    (r"^vision_encoder\.neck\.layer_norm2" + _WB, r"image_encoder.neck.3.\1"),
    # prompt encoder
    (r"^prompt_encoder\.point_embed\.(\d+)\.weight$", r"prompt_encoder.point_embeddings.\1.weight"),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight$", r"prompt_encoder.\1.weight"),
    (r"^prompt_encoder\.mask_embed\.conv1" + _WB, r"prompt_encoder.mask_downscaling.0.\1"),
    (r"^prompt_encoder\.mask_embed\.layer_norm1" + _WB, r"prompt_encoder.mask_downscaling.1.\1"),
    (r"^prompt_encoder\.mask_embed\.conv2" + _WB, r"prompt_encoder.mask_downscaling.3.\1"),
    (r"^prompt_encoder\.mask_embed\.layer_norm2" + _WB, r"prompt_encoder.mask_downscaling.4.\1"),
    (r"^prompt_encoder\.mask_embed\.conv3" + _WB, r"prompt_encoder.mask_downscaling.6.\1"),
    # mask decoder: tokens, two-way transformer, output upscaling
    (r"^mask_decoder\.(iou_token|mask_tokens)\.weight$", r"mask_decoder.\1.weight"),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
     r"\.(q_proj|k_proj|v_proj|out_proj)" + _WB, r"mask_decoder.transformer.layers.\1.\2.\3.\4"),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])" + _WB,
     r"mask_decoder.transformer.layers.\1.norm\2.\3"),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])" + _WB,
     r"mask_decoder.transformer.layers.\1.mlp.\2.\3"),
    (r"^mask_decoder\.transformer\.final_attn_token_to_image\.(q_proj|k_proj|v_proj|out_proj)" + _WB,
     r"mask_decoder.transformer.final_attn_token_to_image.\1.\2"),
    (r"^mask_decoder\.transformer\.layer_norm_final_attn" + _WB, r"mask_decoder.transformer.norm_final_attn.\1"),
    (r"^mask_decoder\.upscale_conv1" + _WB, r"mask_decoder.output_upscaling.0.\1"),
    (r"^mask_decoder\.upscale_layer_norm" + _WB, r"mask_decoder.output_upscaling.1.\1"),
    (r"^mask_decoder\.upscale_conv2" + _WB, r"mask_decoder.output_upscaling.3.\1"),
]]
# HF SamFeedForward (proj_in, layers.i, proj_out) -> Meta MLP (layers.0 .. layers.n-1).
_FEED_FORWARD = re.compile(r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)"
                           r"\.(proj_in|layers\.(\d+)|proj_out)" + _WB)


def _common_prefix(keys) -> str:
    """The wrapper prefix (``""``, ``"model."``, ``"sam."``, ...) in front of the SamModel keys."""
    found = Counter(m.group(1) for m in map(_PREFIX.match, keys) if m)
    return found.most_common(1)[0][0] if found else ""


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{key without the wrapper prefix: key as stored}``."""
    prefix = _common_prefix(sd)
    return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): k for k in sd}


def is_hf_sam_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    """True if ``sd`` is a Hugging Face ``SamModel`` state dict (optionally under a wrapper
    prefix such as ``model.`` or ``sam.``); False for Meta's official keys and for SAM 2."""
    return any(_MARKER.match(k) for k in _strip(sd))


def _unknown(keys: list[str]) -> CheckpointError:
    more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
    return CheckpointError(f"Hugging Face SAM checkpoint has keys segment_anything's Sam does not know: "
                           f"{', '.join(keys[:5])}{more}")


def hf_to_sam_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a ``SamModel`` state dict to ``segment_anything`` ``Sam`` keys (same tensors, no copies).

    Raises:
        CheckpointError: keys the mapping does not know (named), or untied positional
            embeddings that one ``Sam`` cannot hold.
    """
    stored = _strip(sd)
    sd = {k: sd[v] for k, v in stored.items()}
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    feed_forward: dict[str, dict[str, torch.Tensor]] = {}  # module -> {HF part key: tensor}

    pes = [sd[k] for k in _PE_KEYS if k in sd]
    if pes:
        if len(pes) == 2 and (pes[0].shape != pes[1].shape or not torch.equal(pes[0], pes[1])):
            raise CheckpointError(f"Hugging Face SAM checkpoint: {_PE_KEYS[0]} and {_PE_KEYS[1]} differ; "
                                  "segment_anything's Sam has one positional embedding")
        out[_PE_TARGET] = pes[0]

    for key, tensor in sd.items():
        if key in _PE_KEYS:
            continue
        m = _FEED_FORWARD.match(key)
        if m:
            feed_forward.setdefault(m.group(1), {})[key[m.end(1) + 1:]] = tensor
            continue
        for pattern, repl in _RENAMES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = tensor
                break
        else:
            unknown.append(stored[key])
    if unknown:
        raise _unknown(unknown)

    for module, parts in feed_forward.items():
        hidden = sorted({int(k.split(".")[1]) for k in parts if k.startswith("layers.")})
        if hidden != list(range(len(hidden))):
            raise _unknown(sorted(stored[f"mask_decoder.{module}.{k}"] for k in parts))
        last = len(hidden) + 1
        for part, tensor in parts.items():
            name, _, leaf = part.rpartition(".")
            if name == "proj_in":
                index = 0
            elif name == "proj_out":
                index = last
            else:
                index = int(name.split(".")[1]) + 1
            out[f"mask_decoder.{module}.layers.{index}.{leaf}"] = tensor
    return out
