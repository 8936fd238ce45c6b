"""Benchmarks 3 and 4: training-step costs, on the real training data path and step modules.

3. ``decoder`` strategy: one epoch from precomputed (cached) embeddings vs one epoch that re-encodes
   every batch with the frozen encoder (the one-time precompute is reported beside them).
4. ``lora`` vs ``full`` fine-tuning: seconds per optimizer step and peak memory, each in a fresh
   process (``python -m bench.training --method lora ...`` prints one JSON line), optionally with
   gradient checkpointing and bf16 autocast (GPU).

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` (weights included); on the CPU the peak
resident set during the steps (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and
its growth over the resident set before the first step (gradients, optimizer state, activations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from .common import Row, noisy_, timed

DATA = "phantom:tiny?n=2&seed=0"


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def setup(tmp: Path, model_name: str, size: int, method: str, method_config: dict, frozen: bool,
          batch_size: int, device: str, model=None):
    """``(model, step module, loader)`` built as `samliver.training` builds them (no augmentation)."""
    import samliver
    from samliver.adapters import apply_strategy
    from samliver.training.config import TrainConfig
    from samliver.training.data import build_train_loader, split_and_cache
    from samliver.training.steps import make_step, step_kind

    config = TrainConfig(method=method, method_config=method_config, model=model_name, checkpoint="random",
                         data=DATA, test_data=None, split=[1.0, 0.0], augment=False, batch_size=batch_size,
                         tumor_fraction=None, log_with=None, cache_dir=str(tmp))
    split = split_and_cache(config, tmp, True, lambda: None)
    if model is None:
        torch.manual_seed(0)
        model = noisy_(samliver.load_model(model_name, checkpoint="random", input_size=size))
        apply_strategy(model, method, method_config)
        model.to(device)
    step = make_step(model, config).train()
    data = build_train_loader(config, split, model, step_kind(model), frozen, 1, lambda message: None,
                              getattr(step, "prompter", None))
    return model, step, data.loader


def epoch(step, loader, optimizer, device: str, precision: str = "fp32") -> int:
    """One pass over ``loader``; returns the batches seen. No host sync inside (the loss stays on the device)."""
    from samliver.speed import encoder_autocast

    batches = 0
    for batch in loader:
        with encoder_autocast(device, precision):
            loss = step(_to(batch, device))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        batches += 1
    return batches


def decoder_epochs(size: int = 256, rounds: int = 2, batch_size: int = 4, device: str = "cpu") -> list[Row]:
    """Benchmark 3 (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, step, recompute_loader = setup(Path(tmp), "sam_vit_b", size, "decoder", {}, False, batch_size, device)
        (_, _, cached_loader), precompute_s = timed(
            lambda: setup(Path(tmp), "sam_vit_b", size, "decoder", {}, True, batch_size, device, model), device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        n = epoch(step, cached_loader, optimizer, device)             # warm-up
        t_cached, t_recompute = [], []
        for _ in range(rounds):
            t_cached.append(timed(lambda: epoch(step, cached_loader, optimizer, device), device)[1])
            t_recompute.append(timed(lambda: epoch(step, recompute_loader, optimizer, device), device)[1])
    print(f"[decoder] ViT-B at {size} px, {n} batches of {batch_size}/epoch; precompute (once) {precompute_s:.2f}s; "
          f"cached epochs " + " ".join(f"{x:.2f}s" for x in t_cached)
          + "; re-encoding epochs " + " ".join(f"{x:.2f}s" for x in t_recompute), flush=True)
    r = statistics.median(a / b for a, b in zip(t_cached, t_recompute))
    return [Row("3 decoder epoch", f"cached embeddings / re-encoding ({size} px)", r, 0.1,
                f"(precompute once: {precompute_s / statistics.median(t_recompute):.2f} epochs)")]


def _memory_now() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def train_steps(method: str, size: int, batch_size: int, steps: int, device: str, precision: str,
                checkpointing: bool) -> dict[str, Any]:
    """Time ``steps`` optimizer steps (after one warm-up step) of ``method`` on ViT-B; peak memory."""
    from samliver.training.steps import enable_gradient_checkpointing

    with tempfile.TemporaryDirectory() as tmp:
        model, step, loader = setup(Path(tmp), "sam_vit_b", size, method, {}, False, batch_size, device)
        if checkpointing:
            enable_gradient_checkpointing(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        batches = [_to(b, device) for _, b in zip(range(steps + 1), loader)]
        from samliver.speed import encoder_autocast

        def one(batch):
            with encoder_autocast(device, precision):
                loss = step(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        cpu = torch.device(device).type == "cpu"
        if cpu:   # from here: gradients, optimizer state and activations (the weights are already resident)
            before = _memory_now()["VmRSS"]
            Path("/proc/self/clear_refs").write_text("5")       # resets VmHWM to the current RSS
        else:
            torch.cuda.reset_peak_memory_stats()
        one(batches[0])                                          # warm-up (creates the optimizer state)
        seconds = [timed(lambda: one(b), device)[1] for b in batches[1:]]
        images = batch_size * len(seconds)
        result = {"method": method, "size": size, "batch_size": batch_size, "precision": precision,
                  "checkpointing": checkpointing, "trainable": sum(p.numel() for p in params),
                  "step_s": statistics.median(seconds), "images_per_s": images / sum(seconds)}
        if cpu:
            peak = _memory_now()["VmHWM"]
            result.update(peak_bytes=peak, growth_bytes=peak - before)
        else:
            result.update(peak_bytes=torch.cuda.max_memory_allocated(), syncs_per_step=_syncs(lambda: one(batches[-1])))
        return result


def _syncs(fn) -> int:
    """How many synchronizing CUDA calls PyTorch reports (`torch.cuda.set_sync_debug_mode`) while ``fn`` runs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def train_steps_child(method: str, size: int, batch_size: int, steps: int, device: str = "cpu",
                      precision: str = "fp32", checkpointing: bool = False) -> dict[str, Any]:
    """`train_steps` in a fresh Python process (so peak memory is this configuration's alone)."""
    cmd = [sys.executable, "-m", "bench.training", "--method", method, "--size", str(size), "--batch-size",
           str(batch_size), "--steps", str(steps), "--device", device, "--precision", precision]
    if checkpointing:
        cmd.append("--checkpointing")
    # bench/ is found through PYTHONPATH, appended so that an installed samliver (gpu_check.sh installs it
    # into a --target folder, first on PYTHONPATH) is not shadowed by the source tree.
    root = str(Path(__file__).resolve().parents[1])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([root] if root not in paths else []))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora_vs_full(size: int = 256, batch_size: int = 2, steps: int = 3, device: str = "cpu") -> list[Row]:
    """Benchmark 4 (see the module docstring)."""
    got = {m: train_steps_child(m, size, batch_size, steps, device) for m in ("lora", "full")}
    for m, r in got.items():
        extra = f", growth over the pre-step RSS {r['growth_bytes'] / 2**20:.0f} MiB" if "growth_bytes" in r else ""
        print(f"[train] {m:4s} ViT-B {size} px batch {batch_size}: {r['trainable'] / 1e6:.2f} M trainable, "
              f"{r['step_s']:.2f} s/step, peak {r['peak_bytes'] / 2**20:.0f} MiB{extra}", flush=True)
    lora, full = got["lora"], got["full"]
    rows = [Row("4 LoRA vs full", f"step time LoRA / full ({size} px, batch {batch_size})",
                lora["step_s"] / full["step_s"]),
            Row("4 LoRA vs full", "peak memory LoRA / full", lora["peak_bytes"] / full["peak_bytes"])]
    if "growth_bytes" in lora:
        rows.append(Row("4 LoRA vs full", "training memory (growth over pre-step RSS) LoRA / full",
                        lora["growth_bytes"] / full["growth_bytes"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one training-step measurement (prints one JSON line)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args(argv)
    result = train_steps(args.method, args.size, args.batch_size, args.steps, args.device, args.precision,
                         args.checkpointing)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
