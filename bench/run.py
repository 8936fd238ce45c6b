"""The CPU benchmark suite of issue 7: ``python -m bench`` (or ``python bench/run.py``).

Every figure is a ratio of two runs measured side by side in this process (or, for memory, in
fresh child processes), so the absolute speed of the machine cancels out:

1. ViT-B image encoder forward (random weights): samliver / segment_anything, samliver / transformers.
2. ``segment_volume`` on a 24-slice phantom with box prompts vs a naive ``SamPredictor`` loop
   (identical masks in fp32).
3. ``decoder`` strategy epoch with cached embeddings vs re-encoding.
4. LoRA vs full fine-tune step time and peak memory.

Defaults finish in minutes on an idle laptop-class CPU: the encoder at SAM's 1024 px; the volume,
decoder and training benchmarks with the ViT-B architecture at a reduced input size (512 / 256 px)
so they stay short, which the table says. ``--quick`` shrinks everything to a smoke run.
The last line is ``RESULT: k/n targets met`` followed by the ratios.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

import torch  # noqa: E402

from bench import encoder, training, volume  # noqa: E402
from bench.common import Row, print_table  # noqa: E402

BENCHES = ("encoder", "volume", "decoder", "lora")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in about a minute")
    parser.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per comparison (default 2; quick 1)")
    parser.add_argument("--encoder-size", type=int, default=None, help="encoder benchmark input px (default 1024)")
    parser.add_argument("--volume-size", type=int, default=None, help="volume benchmark input px (default 512)")
    parser.add_argument("--train-size", type=int, default=None, help="decoder/LoRA benchmarks input px (default 256)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every usable CPU)")
    args = parser.parse_args(argv)
    from samliver.speed import set_threads

    threads = set_threads(args.threads)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 2)
    enc_size = args.encoder_size or (256 if quick else 1024)
    vol_size = args.volume_size or (128 if quick else 512)
    train_size = args.train_size or (128 if quick else 256)
    print(f"samliver CPU benchmarks: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{threads} threads, {time.strftime('%Y-%m-%d %H:%M')}{', QUICK' if quick else ''}", flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    if "encoder" in args.only:
        rows += encoder.run(size=enc_size, rounds=rounds)
    if "volume" in args.only:
        rows += volume.run(size=vol_size, slices=8 if quick else 24, side=64 if quick else 256,
                           rounds=args.rounds or 1)    # 24 slices per run already average over many encodes
    if "decoder" in args.only:
        rows += training.decoder_epochs(size=train_size, rounds=rounds)
    if "lora" in args.only:
        rows += training.lora_vs_full(size=train_size, batch_size=2, steps=1 if quick else 3)
    print_table(rows)
    targets = [r for r in rows if r.target is not None]
    met = sum(bool(r.ok) for r in targets)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    print(f"RESULT: {met}/{len(targets)} targets met; " + "; ".join(f"{r.figure.split(' (')[0]} {r.value:.3f}"
                                                           for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
