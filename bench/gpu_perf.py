"""The GPU figures of issue 7 (run through ``bench/gpu_check.sh``; also runs on the CPU with ``--quick``).

    python -m bench.gpu_perf [--quick] [--device cuda] [--no-compile] [--sections encoders volume training compile]

Prints, with random weights (seeded noise; the bundled trained ``samliver_tiny`` for the bf16 mask check):

- encoders: images/s of the ViT-B encoder for upstream fp32 (``segment_anything``'s own forward),
  samliver fp32 (fast attention), samliver bf16 (autocast), and, in the ``compile`` section,
  samliver bf16 + ``torch.compile``; the same for SAM 2.1 tiny (upstream = transformers' Hiera,
  which samliver runs unmodified, so its fp32 row is both);
- volume: a 200-slice phantom's ``segment_volume`` wall time (fp32 and bf16) against the naive
  upstream loop (``SamPredictor.set_image`` + ``predict`` per slice and object, fp32), voxels that
  differ in fp32, ``propagate_volume`` time, and the per-object Dice of bf16 against fp32 masks;
- training: LoRA and full fine-tune images/s and peak memory at 1024 px batch 4 in bf16, with and
  without gradient checkpointing (each in a fresh process, `bench.training`).

The last line is ``SUMMARY {...}`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from .common import noisy_, sync, timed
from .training import train_steps_child
from .volume import build_pair, naive_upstream, phantom_volume

SECTIONS = ("encoders", "volume", "training", "compile")


def images_per_s(fn, batch: int, iters: int, device: str, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return batch * iters / (time.perf_counter() - start)


def _encoder_runs(name: str, size: int, device: str, compiled: bool):
    """``{label: (callable, model)}`` for one architecture (see the module docstring)."""
    import samliver
    from samliver.speed import compile_encoder, encoder_autocast

    from samliver.registry import get_spec

    torch.manual_seed(0)
    resizable = getattr(get_spec(name).builder, "resizable_input", False)
    ours = noisy_(samliver.load_model(name, checkpoint="random", input_size=size if resizable else None))
    ours = ours.to(device).eval()
    size = ours.input_size
    runs = {}
    if not compiled:
        if hasattr(ours, "sam"):
            from samliver.models.sam import build_sam_module

            upstream = build_sam_module(ours.spec).to(device).eval()   # plain segment_anything modules
            upstream.load_state_dict(ours.sam.state_dict())
            runs["upstream fp32"] = lambda x: upstream.image_encoder(x)
            runs["samliver fp32"] = lambda x: ours.encode(x).image_embeddings
        else:
            runs["upstream (transformers) = samliver fp32"] = lambda x: ours.encode(x).image_embeddings
    else:
        compile_encoder(ours)

    def bf16(x):
        with encoder_autocast(device, "bf16"):
            return ours.encode(x).image_embeddings

    runs["samliver bf16" + (" + compile" if compiled else "")] = bf16
    return runs, size


def encoders(models: list[str], size: int, batch: int, iters: int, device: str, compiled: bool) -> dict:
    out = {}
    for name in models:
        runs, side = _encoder_runs(name, size, device, compiled)
        pixels = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            if not compiled and "upstream fp32" in runs:
                diff = (runs["upstream fp32"](pixels) - runs["samliver fp32"](pixels)).abs().max().item()
                print(f"{name}: samliver fp32 vs upstream fp32 max |diff| {diff:.2e}", flush=True)
                out[f"{name} max_abs_diff_fp32"] = diff
            for label, fn in runs.items():
                warm = 3 if compiled else 2
                start = time.perf_counter()
                rate = images_per_s(lambda: fn(pixels), batch, iters, device, warmup=warm)
                extra = f" (with warm-up/compilation {time.perf_counter() - start:.0f} s)" if compiled else ""
                print(f"{name} {side}px batch {batch}: {label:40s} {rate:8.1f} images/s{extra}", flush=True)
                out[f"{name} {label} images/s"] = rate
        del runs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def bf16_dice(hu: np.ndarray, prompts: dict, device: str) -> dict:
    """Per-object Dice of bf16 against fp32 masks, with the bundled trained ``samliver_tiny`` weights."""
    import samliver
    from samliver.inference import SliceEncoder, decode_objects

    model = samliver.load_model("samliver_tiny", device=device)
    size = hu.shape[1:]
    dices = []
    fp32, bf16 = SliceEncoder(model, batch_size=16), SliceEncoder(model, batch_size=16, precision="bf16")
    for start in range(0, len(prompts), 16):
        zs = list(prompts)[start:start + 16]
        a, b = fp32.encode(hu, zs), bf16.encode(hu, zs)
        for z in zs:
            ma = decode_objects(model, a[z], prompts[z], size).masks
            mb = decode_objects(model, b[z], prompts[z], size).masks
            dices += [_dice(x, y) for x, y in zip(ma, mb) if x.any() or y.any()]
    d = np.asarray(dices)
    print(f"samliver_tiny (trained) bf16 vs fp32 per-object Dice over {d.size} objects: min {d.min():.4f}, "
          f"mean {d.mean():.4f}, share >= 0.99: {(d >= 0.99).mean():.3f}", flush=True)
    return {"bf16_vs_fp32_dice_min": float(d.min()), "bf16_vs_fp32_dice_mean": float(d.mean()),
            "bf16_vs_fp32_share_ge_0.99": float((d >= 0.99).mean())}


def volume(size: int, slices: int, side: int, batch: int, device: str) -> dict:
    import samliver

    hu, prompts = phantom_volume(slices, side)
    upstream, ours = build_pair("sam_vit_b", size, device)
    window = ours.spec.window
    objects = sum(len(p) for p in prompts.values())
    print(f"volume: phantom {hu.shape}, {len(prompts)} prompted slices, {objects} boxes, ViT-B {size}px, "
          f"samliver batch {batch}", flush=True)
    few = dict(list(prompts.items())[:2])
    naive_upstream(upstream, hu, few, window)                                    # warm-up
    for precision in ("fp32", "bf16"):
        samliver.Predictor(ours, batch_size=batch, precision=precision).segment_volume(hu, few)
    ref, t_naive = timed(lambda: naive_upstream(upstream, hu, prompts, window), device)
    out = {"volume_shape": list(hu.shape), "prompted_slices": len(prompts), "naive_upstream_fp32_s": t_naive}
    for precision in ("fp32", "bf16"):
        pred = samliver.Predictor(ours, batch_size=batch, precision=precision)
        got, secs = timed(lambda: pred.segment_volume(hu, prompts), device)
        out[f"segment_volume_{precision}_s"] = secs
        out[f"speedup_{precision}_vs_naive_fp32"] = t_naive / secs
        differ = int((got != ref).sum())
        out[f"differing_voxels_{precision}"] = differ
        print(f"volume: naive upstream fp32 loop {t_naive:.2f} s; samliver segment_volume {precision} {secs:.2f} s "
              f"({t_naive / secs:.1f}x); voxels differing from the naive loop: {differ} of {int((ref > 0).sum())} "
              f"labelled", flush=True)
    key = max(prompts, key=lambda z: len(prompts[z]))
    pred = samliver.Predictor(ours, batch_size=batch, precision="bf16")
    _, secs = timed(lambda: pred.propagate_volume(hu, key, prompts[key]), device)
    out["propagate_volume_bf16_s"] = secs
    print(f"volume: propagate_volume bf16 from slice {key}: {secs:.2f} s", flush=True)
    out.update(bf16_dice(hu, prompts, device))
    return out


def training(size: int, batch: int, steps: int, device: str, precision: str) -> dict:
    out = {}
    for method in ("lora", "full"):
        for ckpt in (False, True):
            label = f"{method} {'checkpointing' if ckpt else 'no checkpointing'}"
            try:
                r = train_steps_child(method, size, batch, steps, device, precision, ckpt)
            except RuntimeError as exc:       # e.g. out of memory: report it, go on with the others
                print(f"training ViT-B {size}px batch {batch} {precision}: {label}: FAILED: "
                      f"{str(exc).strip().splitlines()[-1]}", flush=True)
                out[f"{label} failed"] = str(exc).strip().splitlines()[-1]
                continue
            print(f"training ViT-B {size}px batch {batch} {precision}: {label:26s} {r['images_per_s']:7.2f} images/s, "
                  f"peak {r['peak_bytes'] / 2**30:.2f} GiB, {r['trainable'] / 1e6:.1f} M trainable, "
                  f"{r.get('syncs_per_step', '-')} host syncs in a step", flush=True)
            out[f"{label} images/s"] = r["images_per_s"]
            out[f"{label} peak GiB"] = r["peak_bytes"] / 2**30
            out[f"{label} syncs/step"] = r.get("syncs_per_step")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of this script)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    args = parser.parse_args(argv)
    device, quick = args.device, args.quick
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    print(f"torch {torch.__version__}, {name}, {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False      # fp32 means fp32 (no TF32) in every comparison
    torch.backends.cudnn.allow_tf32 = False
    summary: dict = {"device": name}
    models = ["sam_vit_b"] if quick else ["sam_vit_b", "sam2.1_hiera_tiny"]
    size, batch, iters = (256, 2, 2) if quick else (1024, 8, 10)
    started = time.perf_counter()
    if "encoders" in args.sections:
        summary.update(encoders(models, size, batch, iters, device, compiled=False))
    if "volume" in args.sections:
        summary.update(volume(128 if quick else 1024, 8 if quick else 200, 64 if quick else 256,
                              4 if quick else 16, device))
    if "training" in args.sections:
        summary.update(training(128 if quick else 1024, 2 if quick else 4, 1 if quick else 5, device,
                                "fp32" if device == "cpu" else "bf16"))
    if "compile" in args.sections and not args.no_compile:
        summary.update(encoders(models, size, batch, iters, device, compiled=True))
    summary["total_s"] = time.perf_counter() - started
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
