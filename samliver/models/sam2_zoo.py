"""The built-in SAM 2.1 family (Hiera-T/S/B+/L) and MedSAM2.

Architecture options copy Meta's ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` (trunk and
neck); where a yaml file leaves a Hiera argument out, the value written here is the
default of Meta's ``Hiera`` class. Checkpoint file, source and digest come from
``weights/manifest.json`` (`checkpoint_fields`).
"""

from __future__ import annotations

from samliver.registry import ModelSpec, register_model

from .sam2 import Sam2Segmenter
from .zoo import checkpoint_fields

# Meta's Hiera defaults: window_spec (8, 4, 14, 7), window_pos_embed_bkg_spatial_size (14, 14),
# stages (2, 3, 16, 3), global_att_blocks (12, 16, 20).
_HIERA_T = dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
                backbone_channel_list=(768, 384, 192, 96))
_HIERA_S = dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
                backbone_channel_list=(768, 384, 192, 96))
_HIERA_B_PLUS = dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                     window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(14, 14),
                     backbone_channel_list=(896, 448, 224, 112))
_HIERA_L = dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7),
                backbone_channel_list=(1152, 576, 288, 144))


def _register_sam2(name: str, options: dict, input_size: int = 1024) -> None:
    register_model(ModelSpec(name=name, family="sam2", builder=Sam2Segmenter, input_size=input_size,
                             intensity="sam2", options=dict(options), **checkpoint_fields(name)))


_register_sam2("sam2.1_hiera_tiny", _HIERA_T)
_register_sam2("sam2.1_hiera_small", _HIERA_S)
_register_sam2("sam2.1_hiera_base_plus", _HIERA_B_PLUS)
_register_sam2("sam2.1_hiera_large", _HIERA_L)
# MedSAM2 (bowang-lab/MedSAM2, MedSAM2_latest.pt): SAM 2.1 Hiera-T fine-tuned on 3D medical
# images at 512x512 (their sam2.1_hiera_t512.yaml: image_size 512, memory RoPE 32x32); the
# weights are shape-identical to Hiera-T, only the input size differs.
_register_sam2("medsam2", _HIERA_T, input_size=512)
