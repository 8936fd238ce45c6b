"""Benchmark 2: ``Predictor.segment_volume`` vs a naive upstream loop on a phantom with box prompts.

The naive loop is what one writes with segment_anything alone: for every prompted slice
``SamPredictor.set_image`` then one ``predict(box=...)`` per object, painted with the higher label
winning. samliver encodes the prompted slices in batches (fast attention, owned cache entries) and
decodes each slice's objects in one call. Both run the same weights in fp32 (or both in
``--precision`` on a GPU); the label maps are compared voxel by voxel.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .common import Row, noisy_, timed


def phantom_volume(slices: int, side: int, seed: int = 0):
    """A liver-tumour phantom ``(slices, side, side)`` and its box prompts ``{z: Prompts}`` (one box per object)."""
    from samliver.data import make_phantom
    from samliver.prompts import boxes_from_mask

    case = make_phantom(seed, "liver-tumor", shape=(slices, side, side))
    prompts = {}
    for z in range(case.label.shape[0]):
        p = boxes_from_mask(case.label[z])
        if p is not None:
            prompts[z] = p
    return case.image.array, prompts


def naive_upstream(sam, hu: np.ndarray, prompts: dict, window) -> np.ndarray:
    """segment_anything alone: ``set_image`` + one ``predict`` per object on every prompted slice."""
    from segment_anything import SamPredictor

    from samliver.models.base import window_to_rgb

    ref = SamPredictor(sam)
    out = np.zeros(hu.shape, np.uint8)
    for z, p in prompts.items():
        ref.set_image(window_to_rgb(hu[z], window))
        for box, label in zip(p.boxes, p.labels):
            masks, _, _ = ref.predict(box=np.asarray(box), multimask_output=False)
            np.maximum(out[z], np.where(masks[0], np.uint8(label), np.uint8(0)), out=out[z])
    return out


def build_pair(name: str, size: int, device: str):
    """A plain upstream ``Sam`` and a samliver model with the same (noised random) weights."""
    import samliver
    from samliver.models.sam import build_sam_module
    from samliver.registry import get_spec

    torch.manual_seed(0)
    ours = noisy_(samliver.load_model(name, checkpoint="random", input_size=size))
    upstream = build_sam_module(dataclasses.replace(get_spec(name), input_size=size))
    upstream.load_state_dict(ours.sam.state_dict())
    return upstream.eval().to(device), ours.eval().to(device)


def run(model: str = "sam_vit_b", size: int = 512, slices: int = 24, side: int = 256, batch_size: int = 4,
        rounds: int = 1, device: str = "cpu", precision: str = "fp32") -> list[Row]:
    import samliver

    hu, prompts = phantom_volume(slices, side)
    upstream, ours = build_pair(model, size, device)
    objects = sum(len(p) for p in prompts.values())
    print(f"[volume] {model} at {size} px, phantom {hu.shape}, {len(prompts)} prompted slices, {objects} boxes, "
          f"samliver batch {batch_size}, {precision}, {rounds} round(s)", flush=True)
    window = ours.spec.window
    from samliver.speed import encoder_autocast

    def theirs():
        with encoder_autocast(device, precision if precision != "fp32" else None):
            return naive_upstream(upstream, hu, prompts, window)

    def mine():
        return samliver.Predictor(ours, batch_size=batch_size, precision=precision).segment_volume(hu, prompts)

    # warm-up on two slices each
    few = dict(list(prompts.items())[:2])
    naive_upstream(upstream, hu, few, window)
    samliver.Predictor(ours, batch_size=batch_size, precision=precision).segment_volume(hu, few)
    t_theirs, t_ours = [], []
    for _ in range(rounds):
        ref, t = timed(theirs, device)
        t_theirs.append(t)
        got, t = timed(mine, device)
        t_ours.append(t)
    differ = int((ref != got).sum())
    print(f"[volume] naive upstream loop " + " ".join(f"{x:.2f}s" for x in t_theirs)
          + "; samliver segment_volume " + " ".join(f"{x:.2f}s" for x in t_ours)
          + f"; labelled voxels {int((ref > 0).sum())}, differing voxels {differ}", flush=True)
    r = float(np.median([a / b for a, b in zip(t_ours, t_theirs)]))
    return [Row("2 segment_volume", f"samliver / naive SamPredictor loop ({slices} slices, {size} px)", r, 0.75,
                f"(differing voxels {differ})")]
