"""``samliver evaluate --model NAME --data SPEC --prompts box,point-1,... -o RUN`` and
``samliver evaluate --compare RUN1 RUN2``."""

from __future__ import annotations

import argparse
import sys

from samliver.errors import SamliverError

DEFAULT_PROMPTS = "box,box-jitter-5mm,point-1,point-3,clicks-5,key-slice-propagate"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a model on a dataset under several prompt settings",
        description="Evaluate a model (zero-shot or with an adapter) on a labelled dataset, liver and tumour "
                    "targets, under several prompt settings; writes per_case.csv, per_lesion.csv, summary.json, "
                    "summary.md and figures into the run folder. `--compare RUN1 RUN2` prints the difference table.")
    p.add_argument("--model", help="model name (see `samliver weights list`)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the model's file in the weights folders; "
                                        "'random' for random weights)")
    p.add_argument("--adapter", help="saved adapter folder to apply (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--data", help="dataset folder (MSD, nnU-Net, LiTS, images/+labels/) or phantom[:PRESET?n=N&seed=S]")
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="which cases (default all); from --split-file, else a 0.7/0.15/0.15 split by --split-seed")
    p.add_argument("--split-file", help="split file (JSON/YAML: train/val/test lists of case names)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split made from fractions (default 0)")
    p.add_argument("--prompts", default=DEFAULT_PROMPTS,
                   help=f"comma-separated prompt settings (default {DEFAULT_PROMPTS}); --list-prompts lists them")
    p.add_argument("--targets", default=None, help="liver,tumour (default both; tumour only without liver labels)")
    p.add_argument("-o", "--output", help="run folder")
    p.add_argument("--max-cases", type=int, help="evaluate only the first N cases")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated prompts (default 0)")
    p.add_argument("--window", metavar="LO,HI", help="CT window in HU (default: the model's, W400/L40)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM", help="NSD tolerance in mm (default 2)")
    p.add_argument("--batch-size", type=int, default=4, help="slices per encoder call (default 4)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    again.add_argument("--force", action="store_true", help="replace the run in the output folder")
    p.add_argument("--no-figures", action="store_true", help="skip box plots and overlay pictures")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first case that cannot be evaluated (exit 2); by default such cases are "
                        "skipped, listed at the end, and the exit status is 1")
    p.add_argument("--compare", nargs=2, metavar=("RUN1", "RUN2"), help="print the difference table of two runs")
    p.add_argument("--list-prompts", action="store_true", help="list the prompt settings and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from samliver.evaluation import compare_runs, evaluate, format_compare, list_settings

    if args.list_prompts:
        for examples, description in list_settings():
            print(f"{examples:40s} {description}")
        return 0
    if args.compare:
        print(format_compare(compare_runs(*args.compare), *args.compare))
        return 0
    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data), ("-o/--output", args.output))
               if not value]
    if missing:
        raise SamliverError(f"evaluate: {', '.join(missing)} required (or --compare RUN1 RUN2)")
    window = None
    if args.window:
        try:
            window = tuple(float(v) for v in args.window.split(","))
        except ValueError:
            window = ()
        if len(window) != 2 or not window[0] < window[1]:
            raise SamliverError(f"--window: expected LO,HI in HU with LO < HI, got {args.window!r}")
    result = evaluate(args.model, args.data, args.prompts, args.output, checkpoint=args.checkpoint,
                      adapter=args.adapter, device=args.device, split=args.split, split_file=args.split_file,
                      split_seed=args.split_seed, max_cases=args.max_cases, targets=args.targets, seed=args.seed,
                      window=window, batch_size=args.batch_size, nsd_tolerance_mm=args.nsd_tolerance,
                      resume=args.resume, force=args.force, figures=not args.no_figures, strict=args.strict,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    print(result.table())
    print(f"wrote {result.run_dir}")
    for name, message in result.skipped.items():
        print(f"  skipped {name}: {message}")
    return 1 if result.skipped else 0
