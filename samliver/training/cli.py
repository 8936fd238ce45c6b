"""Command line of ``train_adapter.py``: flags -> config overrides -> `samliver.training.loop.train`.

Flags are hyphenated; the Accelerate examples' underscore spellings are accepted as aliases
(``--max_steps``, ``--output_dir``, ``--checkpointing_steps``, ``--resume_from_checkpoint``,
``--mixed_precision``, ``--gradient_accumulation_steps``, ``--learning_rate``, ``--with_tracking``).
User mistakes print one line and exit 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any, Callable


from .config import ConfigError
from .resolution import dotted, merge, parse_assignment, resolve

#: (flags, config key, type, help); the first flag is the canonical hyphenated one
OPTIONS: tuple[tuple[tuple[str, ...], str, Any, str], ...] = (
    (("--method",), "method", str, "adaptation strategy (registered: full, decoder, lora, depth3d, ...)"),
    (("--model",), "model", str, "base model name (samliver.list_models())"),
    (("--checkpoint",), "checkpoint", str, "base checkpoint: a path, or 'random' (default: the weights folders)"),
    (("--adapter",), "adapter", str, "a saved adapter folder to continue training from"),
    (("--data",), "data", str, "dataset folder or phantom spec, e.g. phantom:liver-tumor?n=12&seed=0"),
    (("--test-data", "--test_data"), "test_data", str, "held-out test dataset (other cases than --data)"),
    (("--max-steps", "--max_steps", "--max_train_steps"), "max_steps", int, "optimizer steps in all"),
    (("--batch-size", "--batch_size"), "batch_size", int, "slices per process per micro-batch"),
    (("--lr", "--learning-rate", "--learning_rate"), "lr", float, "peak learning rate"),
    (("--output-dir", "--output_dir"), "output_dir", str, "run folder ({method} and {model} are filled in)"),
    (("--seed",), "seed", int, "random seed (model init, draws, prompts, augmentation)"),
    (("--mixed-precision", "--mixed_precision"), "mixed_precision", str,
     "no, bf16 or fp16 (default: as accelerate launch says)"),
    (("--gradient-accumulation-steps", "--gradient_accumulation_steps"), "gradient_accumulation_steps", int,
     "micro-batches per optimizer step"),
    (("--eval-every", "--eval_every"), "eval_every", int, "validate every N steps (0: only at the end)"),
    (("--checkpoint-every", "--checkpoint_every", "--checkpointing_steps"), "checkpoint_every", int,
     "save a resumable checkpoint every N steps"),
    (("--num-workers", "--num_workers"), "num_workers", int, "DataLoader worker processes"),
    (("--log-with", "--log_with"), "log_with", str, "Accelerate tracker: tensorboard (default), wandb, none, ..."),
    (("--export-base", "--export_base"), "export_base", str,
     "also write the whole trained model as a base checkpoint to PATH (+ PATH.json)"),
    (("--cache-dir", "--cache_dir"), "cache_dir", str, "slice cache folder (default: RUN_DIR/cache)"),
    (("--pseudo-label-rounds", "--pseudo_label_rounds"), "pseudo_labels.rounds", int,
     "self-training: after training on --data, N rounds of pseudo-labelling --unlabelled and retraining"),
    (("--unlabelled", "--unlabeled"), "pseudo_labels.unlabelled", str,
     "unlabelled CTs for self-training: a dataset spec or a folder of NIfTI files / DICOM series"),
    (("--pseudo-prompts", "--pseudo_prompts"), "pseudo_labels.prompts", str,
     "the teacher's first prompts: auto (its head or default box generator), unet:PATH, files:FOLDER"),
    (("--pseudo-min-iou", "--pseudo_min_iou"), "pseudo_labels.filter.min_iou", float,
     "keep pseudo-label objects whose predicted IoU is at least this"),
    (("--pseudo-min-stability", "--pseudo_min_stability"), "pseudo_labels.filter.min_stability", float,
     "...and whose mean Dice under jittered prompts is at least this"),
)

#: flags whose value "", "none" or "null" means "not set" (e.g. ``--test-data none``)
NULLABLE = ("checkpoint", "adapter", "test_data", "export_base", "cache_dir", "log_with", "mixed_precision")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_adapter.py", allow_abbrev=False,
                                     description="Adapt a promptable model to liver / liver-tumour CT with Accelerate.",
                                     epilog="Run with `accelerate launch [--multi_gpu --num_processes N] "
                                            "train_adapter.py ...` for several processes.")
    parser.add_argument("--config", help="YAML config (a path, or a preset name from configs/train/); "
                                         "default: configs/train/<method>.yaml")
    for flags, key, kind, text in OPTIONS:
        parser.add_argument(*flags, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--method-config", "--method_config", action="append", default=[], metavar="KEY=VALUE",
                        help="a strategy config value (YAML), e.g. rank=8 or encoder_targets=[qkv,proj]; repeatable")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config value by dotted key, e.g. prompts.corrective_clicks=2; repeatable")
    parser.add_argument("--resume", "--resume-from-checkpoint", "--resume_from_checkpoint", nargs="?",
                        const="latest", default=None, metavar="PATH",
                        help="continue from the newest checkpoint of the run folder, or from PATH")
    parser.add_argument("--overwrite", "--force", action="store_true",
                        help="start over in a run folder that holds a run (its outputs are replaced)")
    parser.add_argument("--gradient-checkpointing", "--gradient_checkpointing", action="store_true", default=None,
                        help="recompute encoder blocks in the backward pass (less memory at 1024 px)")
    parser.add_argument("--with-tracking", "--with_tracking", action="store_true",
                        help="accepted for the Accelerate examples' sake: tracking is on by default")
    parser.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even where CUDA is present")
    parser.add_argument("--text-prompts", "--text_prompts", action="store_true", default=None,
                        help="also train a CLIP text projection (text_prompts.* keys: tower, descriptions, prob)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def option_overrides(args: argparse.Namespace, options, nullable) -> dict[str, Any]:
    """Config overrides from the value flags of ``options`` that were given (``nullable`` keys: "none" -> None);
    shared by ``train_adapter.py`` and ``train_box_unet.py``."""
    out: dict[str, Any] = {}
    for _, key, _, _ in options:
        value = getattr(args, key)
        if value is not None:
            value = None if key in nullable and str(value).lower() in ("", "none", "null") else value
            out = merge(out, dotted(key, value))   # dotted keys (pseudo_labels.rounds) nest
    return out


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from parsed flags (only those given)."""
    out = option_overrides(args, OPTIONS, NULLABLE)
    for key in ("gradient_checkpointing", "cpu"):
        if getattr(args, key):
            out[key] = True
    method_config: dict[str, Any] = {}
    for text in args.method_config:
        key, value = parse_assignment(text, "--method-config")
        method_config[key] = value
    if method_config:
        out["method_config"] = method_config
    if getattr(args, "text_prompts", None):
        out = merge(out, {"text_prompts": {"enabled": True}})
    for text in args.set:
        key, value = parse_assignment(text, "--set")
        out = merge(out, dotted(key, value))
    return out


def _unknown_flags(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    known = [s for action in parser._actions for s in action.option_strings]
    flag = next((e for e in extra if e.startswith("-")), extra[0])
    close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see --help"
    return f"unknown option {flag}{hint}"


def run_entry_point(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                    go: Callable[[argparse.Namespace], None]) -> int:
    """Parse ``argv`` and run ``go(args)``: a user mistake is one line on stderr and exit status 2 (the
    traceback only with ``--debug``), Ctrl-C says how to continue. Returns the exit status."""
    from samliver.cli.main import report_errors

    args, extra = parser.parse_known_args(argv)

    def run() -> int:
        if extra:
            raise ConfigError(_unknown_flags(parser, extra))
        go(args)
        return 0

    return report_errors(prog, run, debug=args.debug, interrupted="interrupted; continue with --resume")


def main(argv: list[str] | None = None) -> int:
    """Parse, resolve the config, train. Returns the exit status (2 for a user mistake)."""

    def go(args: argparse.Namespace) -> None:
        config, used = resolve(args.config, overrides_from(args))
        from .loop import train
        from .self_training import self_train

        run_training = self_train if config.pseudo_labels.rounds else train
        run_training(config, resume=args.resume, overwrite=args.overwrite, config_file=used)

    return run_entry_point("train_adapter.py", build_parser(), argv, go)
