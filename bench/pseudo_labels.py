"""Does pseudo-label self-training beat training on the few labelled cases alone?

    python bench/pseudo_labels.py [--seeds 0 1 2] [--labelled 3] [--unlabelled 3] [--steps 60]
                                  [--method decoder] [--checkpoint auto] [--out runs/bench_pseudo_labels]

For each seed, one self-training run (`samliver.training.self_training`) with one pseudo-label round on
liver-tumour phantoms: round 0 trains on ``--labelled`` cases (split train / val) and is the
labelled-only baseline; round 1 is the student, trained for the same number of steps on those cases
plus ``--unlabelled`` other phantoms pseudo-labelled by round 0. Both are tested on the same held-out
phantoms (``--test`` cases, seeds 9000+) with a tight ground-truth box per object per slice, as
`samliver.training.validation` does; the table gives their 3D Dice of liver and tumour, and the
pseudo-labels' own Dice against the phantoms' (never trained on) ground truth.

First prompts on the unlabelled cases (``--first-prompts``): ``boxes`` writes each case's tight
ground-truth boxes, each side jittered by up to 5 % (at most 5 px), as a prompts file, i.e. the
unlabelled cases carry an annotator's boxes but no masks; ``auto`` lets the teacher find its own
(its default box generator; samliver_tiny's is the bundled phantom U-Net, where installed).
Base weights: ``weights/samliver_tiny.safetensors`` where present (``--checkpoint auto``), else random.
CPU runs use one torch thread unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # `python bench/pseudo_labels.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samliver.data import load_dataset  # noqa: E402
from samliver.prompts.pseudo_labels import ConfidenceFilter, jitter_prompts, prompts_from_label  # noqa: E402
from samliver.training import resolve  # noqa: E402
from samliver.training.self_training import self_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_box_prompts(spec: str, folder: Path, seed: int) -> None:
    """Each case's tight ground-truth boxes, sides jittered by up to 5 % (at most 5 px), as prompts files."""
    folder.mkdir(parents=True, exist_ok=True)
    jitter = ConfidenceFilter(box_jitter=0.05, box_jitter_max_px=5.0)
    for i, case in enumerate(load_dataset(spec)):
        h, w = case.label.shape[1:]
        objects = []
        for z, prompts in prompts_from_label(case.label).items():
            moved = jitter_prompts(prompts, h, w, jitter, np.random.default_rng([seed, i, z]))
            objects += [{"slice": z, "box": [round(float(v), 2) for v in box], "label": int(label)}
                        for box, label in zip(moved.boxes, moved.labels)]
        (folder / f"{case.name}.json").write_text(json.dumps({"objects": objects}))


def base_checkpoint(choice: str) -> str | None:
    """``auto``: the bundled weights where present (None lets `load_model` find them), else ``random``."""
    if choice != "auto":
        return choice
    return None if (ROOT / "weights" / "samliver_tiny.safetensors").is_file() else "random"


def run_seed(args: argparse.Namespace, seed: int, checkpoint: str | None) -> dict:
    out = Path(args.out) / f"seed_{seed}"
    labelled = f"phantom:{args.preset}?n={args.labelled}&seed={100 * seed}"
    unlabelled = f"phantom:{args.preset}?n={args.unlabelled}&seed={100 * seed + 50}"
    prompts = args.first_prompts
    if prompts == "boxes":
        write_box_prompts(unlabelled, out / "box_prompts", seed)
        prompts = f"files:{out / 'box_prompts'}"
    config, _ = resolve(None, {
        "method": args.method, "model": "samliver_tiny", "checkpoint": checkpoint, "data": labelled,
        "test_data": f"phantom:{args.preset}?n={args.test}&seed=9000",
        "split": [1 - 1 / args.labelled, 1 / args.labelled],
        "max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 5,
        "eval_every": max(1, args.steps // 2), "checkpoint_every": 0, "log_with": "none", "seed": seed,
        "output_dir": str(out / "run"), "loss": {"iou": 1.0},
        "pseudo_labels": {"rounds": 1, "unlabelled": unlabelled, "prompts": prompts,
                          "filter": {"min_iou": args.min_iou, "min_stability": args.min_stability}}})
    start = time.perf_counter()
    try:
        result = self_train(config, overwrite=True)
    finally:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    base, student = result.rounds
    return {"seed": seed, "seconds": round(time.perf_counter() - start, 1), "baseline": base, "student": student}


def table(rows: list[dict]) -> str:
    def f(v) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    lines = ["| seed | baseline liver | student liver | baseline tumour | student tumour | pseudo-label Dice "
             "liver / tumour | objects kept / dropped | train slices (baseline / student) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, s, p = r["baseline"], r["student"], r["student"]["pseudo_labels"]
        lines.append(f"| {r['seed']} | {f(b['test_liver_dice'])} | {f(s['test_liver_dice'])} | "
                     f"{f(b['test_tumor_dice'])} | {f(s['test_tumor_dice'])} | {f(p['liver_dice_vs_truth'])} / "
                     f"{f(p['tumor_dice_vs_truth'])} | {sum(p['kept'].values())} / {sum(p['dropped'].values())} | "
                     f"{b['train_slices']} / {s['train_slices']} |")
    for key, name in (("test_liver_dice", "liver"), ("test_tumor_dice", "tumour")):
        diffs = [r["student"][key] - r["baseline"][key] for r in rows
                 if r["student"][key] is not None and r["baseline"][key] is not None]
        if diffs:
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            lines.append(f"\nstudent - baseline, {name} Dice: mean {statistics.mean(diffs):+.3f} (sd {sd:.3f}), "
                         f"better in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="liver-tumor", help="phantom preset (default liver-tumor, 48x256x256)")
    parser.add_argument("--labelled", type=int, default=3, help="labelled phantoms per seed (one is validation)")
    parser.add_argument("--unlabelled", type=int, default=3, help="unlabelled phantoms per seed")
    parser.add_argument("--test", type=int, default=2, help="held-out test phantoms (the same for every seed)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--method", default="decoder", help="strategy (default decoder: frozen encoder, fast on CPU)")
    parser.add_argument("--checkpoint", default="auto", help="auto: weights/samliver_tiny.safetensors, else random")
    parser.add_argument("--first-prompts", choices=("boxes", "auto"), default="boxes")
    parser.add_argument("--min-iou", type=float, default=0.5)
    parser.add_argument("--min-stability", type=float, default=0.85)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_pseudo_labels"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = base_checkpoint(args.checkpoint)
    print(f"base weights: {'weights/samliver_tiny.safetensors' if checkpoint is None else checkpoint}; "
          f"method {args.method}; {args.steps} steps per round; first prompts {args.first_prompts}", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, seed, checkpoint))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    (Path(args.out) / "summary.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
