"""The built-in SAM-family models. Checkpoint file, source and digest come from
``weights/manifest.json`` so they are written down once."""

from __future__ import annotations

from samliver.registry import ModelSpec, register_model

from .sam import SamSegmenter

# Encoder sizes of Meta's ViT-B/L/H SAM (embed dim, depth, heads, global-attention blocks).
_VIT_B = dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))
_VIT_L = dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23))
_VIT_H = dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31))
# A small SAM for tests and the offline demo: 256-pixel input, 16x16 embedding, 64x64 masks.
_TINY = dict(embed_dim=96, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=8,
             prompt_dim=96, decoder_mlp_dim=384, decoder_heads=4, iou_hidden_dim=96)


def checkpoint_fields(name: str) -> dict:
    """The `ModelSpec` fields that the weights manifest holds for ``name``."""
    from samliver.weights_store import manifest_entry

    entry = manifest_entry(name)
    return dict(checkpoint_file=entry["file"], url=entry["url"], md5_prefix=entry["md5_prefix"],
                sha256=entry["sha256"], description=entry["description"])


def _register_sam(name: str, options: dict, intensity: str = "sam", input_size: int = 1024) -> None:
    register_model(ModelSpec(name=name, family="sam", builder=SamSegmenter, input_size=input_size,
                             intensity=intensity, options=options, **checkpoint_fields(name)))


_register_sam("sam_vit_b", _VIT_B)
_register_sam("sam_vit_l", _VIT_L)
_register_sam("sam_vit_h", _VIT_H)
_register_sam("medsam_vit_b", _VIT_B, intensity="medsam")
_register_sam("samliver_tiny", _TINY, input_size=256)
