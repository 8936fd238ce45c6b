"""Evaluation cost: many prompt settings decode from one encoder pass.

    python bench/eval_bench.py [--data phantom:tiny?n=1&seed=100] [--input-size 256] [--device cpu]

On the same data, with a ViT-B-sized SAM encoder (random weights; input size reduced to 256 so it
runs in minutes on a CPU), times

- a 1-setting run (``box``),
- a 6-setting run (box, box-jitter-5mm, point-1, point-3, clicks-5, key-slice-propagate),
- a naive loop: the six settings as six separate runs, each re-encoding every slice,

and prints the ratios 6-setting / 1-setting (target <= 1.5) and 6-setting / naive (target <= 0.3).
Every run includes everything an evaluation does (prompt simulation, decoding, metrics) except
writing files. Random weights make the numbers a measure of cost, not accuracy. CPU runs use one
torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python bench/eval_bench.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samliver  # noqa: E402
from samliver.evaluation import evaluate  # noqa: E402
from samliver.registry import get_spec  # noqa: E402

SIX = ("box", "box-jitter-5mm", "point-1", "point-3", "clicks-5", "key-slice-propagate")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_run(model, data: str, settings, device: str) -> tuple[float, dict]:
    _sync()
    start = time.perf_counter()
    result = evaluate(model, data, list(settings), None, figures=False)
    _sync()
    return time.perf_counter() - start, result.timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="phantom:tiny?n=1&seed=100", help="dataset spec (default: one tiny phantom)")
    parser.add_argument("--input-size", type=int, default=256, help="encoder input side (default 256; SAM uses 1024)")
    parser.add_argument("--model", default="sam_vit_b", help="registered model whose architecture is used")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a busy machine, thread contention otherwise "
                             "dominates the small decoder calls; 0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = dataclasses.replace(get_spec(args.model), input_size=args.input_size)
    model = spec.builder(spec).to(args.device).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {spec.name} architecture, random weights, {params:.0f} M parameters, input {spec.input_size}, "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"data: {args.data}")
    # Warm-up (imports, MONAI, allocator) on the small model, outside the timings.
    evaluate(samliver.load_model("samliver_tiny", checkpoint="random", device=args.device), args.data,
             ["box"], None, figures=False, max_cases=1)

    one, t1 = timed_run(model, args.data, ["box"], args.device)
    six, t6 = timed_run(model, args.data, SIX, args.device)
    naive, encoded = 0.0, 0
    for setting in SIX:
        seconds, timings = timed_run(model, args.data, [setting], args.device)
        naive += seconds
        encoded += timings["slices_encoded"]
    for label, seconds, t in (("1 setting (box):", one, t1), ("6 settings, shared cache:", six, t6)):
        print(f"{label:26s} {seconds:7.1f} s  (encoder {t['encode_s']:.1f} s, {t['slices_encoded']} slices encoded, "
              f"metrics {t['metrics_s']:.1f} s)")
    print(f"{'6 settings, naive loop:':26s} {naive:7.1f} s  ({encoded} slices encoded)")
    decode = ", ".join(f"{k} {v:.2f}" for k, v in t6["decode_s"].items())
    print(f"decode seconds per setting (6-setting run): {decode}")
    r1, r2 = six / one, six / naive
    print(f"ratio 6-setting / 1-setting: {r1:.2f} (target <= 1.5) {'OK' if r1 <= 1.5 else 'MISSED'}")
    print(f"ratio 6-setting / naive re-encoding loop: {r2:.2f} (target <= 0.3) {'OK' if r2 <= 0.3 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
