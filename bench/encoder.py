"""Benchmark 1: the ViT-B image encoder forward, samliver vs segment_anything vs transformers.

All three run the same random weights (a transformers ``SamModel``'s, seeded noise added, converted
to segment_anything's keys for the other two), fp32, ``torch.no_grad``, one image per call.
"""

from __future__ import annotations

import dataclasses

import torch

from .common import Row, interleaved, noisy_, ratio


def build_encoders(size: int, device: str = "cpu"):
    """``(upstream Sam, samliver model, transformers SamModel)`` with equal ViT-B weights at ``size`` px."""
    from transformers import SamConfig, SamModel

    import samliver
    from samliver.models.convert_hf_sam import hf_to_sam_state_dict
    from samliver.models.sam import build_sam_module
    from samliver.registry import get_spec

    torch.manual_seed(0)
    config = SamConfig(vision_config=dict(image_size=size), prompt_encoder_config=dict(image_size=size))
    hf = noisy_(SamModel(config)).eval()
    official = hf_to_sam_state_dict(hf.state_dict())
    if size == 1024:
        from segment_anything import sam_model_registry

        upstream = sam_model_registry["vit_b"]()
    else:  # the same upstream classes at another size (segment_anything's builders fix 1024)
        upstream = build_sam_module(dataclasses.replace(get_spec("sam_vit_b"), input_size=size))
    upstream.load_state_dict(official)
    ours = samliver.load_model("sam_vit_b", checkpoint="random", input_size=size)
    ours.load_weights(official)
    return upstream.eval().to(device), ours.eval().to(device), hf.to(device)


def run(size: int = 1024, rounds: int = 2, device: str = "cpu") -> list[Row]:
    upstream, ours, hf = build_encoders(size, device)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    print(f"[encoder] ViT-B at {size} px, fp32, 1 image/call, {rounds} rounds + warm-up; transformers attention: "
          f"{hf.config._attn_implementation}; samliver fast attention: {ours.fast_attention}", flush=True)

    def calls():
        return {
            "segment_anything": lambda: upstream.image_encoder(pixels),
            "samliver": lambda: ours.encode(pixels).image_embeddings,
            "transformers": lambda: hf.get_image_embeddings(pixels),
        }

    with torch.no_grad():
        outs = {name: fn() for name, fn in calls().items()}    # warm-up, and the outputs compared
        diff_up = (outs["samliver"] - outs["segment_anything"]).abs().max().item()
        diff_hf = (outs["samliver"] - outs["transformers"]).abs().max().item()
        del outs
        seconds = interleaved(calls(), rounds, device)
    for name, s in seconds.items():
        print(f"[encoder] {name:17s} " + " ".join(f"{x:7.2f}s" for x in s), flush=True)
    print(f"[encoder] max |samliver - segment_anything| {diff_up:.1e}, max |samliver - transformers| {diff_hf:.1e}")
    return [
        Row("1 encoder ViT-B", f"samliver / segment_anything ({size} px, fp32)",
            ratio(seconds, "samliver", "segment_anything"), 0.75, f"(max abs diff {diff_up:.0e})"),
        Row("1 encoder ViT-B", f"samliver / transformers SamModel ({size} px, fp32)",
            ratio(seconds, "samliver", "transformers"), 1.0, f"(max abs diff {diff_hf:.0e})"),
    ]
