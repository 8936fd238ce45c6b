"""The Accelerate training loop, in the order of Accelerate's examples: ``Accelerator`` and seed, build,
``prepare``, loop with ``accumulate``, validate with ``gather_for_metrics``, ``save_state`` / ``load_state``
with ``skip_first_batches`` for resume, ``end_training``.

A step is one optimizer step (``gradient_accumulation_steps`` micro-batches of ``batch_size`` slices on
each process). An epoch is a whole number of steps, so a resumed run knows from the step count alone
which epoch it is in and how many batches of it were already seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samliver.adapters.decoder import encoder_frozen

from . import validation
from .config import ConfigError, TrainConfig
from .data import build_train_loader, eval_loader, split_and_cache
from .finish import finish
from .run_folder import RunFolder
from .setup import (Progress, build_model, check_checkpoint, environment, keep_trainable_only, lr_lambda,
                    open_run)
from .steps import enable_gradient_checkpointing, make_step, step_kind


@dataclass
class RunResult:
    """What `train` returns: the run folder, the final trained model (unwrapped) and ``run.json``'s content."""

    run_dir: Any
    model: nn.Module
    info: dict[str, Any]


def train(config: TrainConfig, resume: str | None = None, overwrite: bool = False,
          config_file: str | None = None) -> RunResult:
    """Train ``config.method`` on ``config.model``; see the package docstring for the run folder."""
    from tqdm.auto import tqdm

    run, accelerator, log, start_from = open_run(config, resume)
    run.start(resume is not None, overwrite)
    accelerator.wait_for_everyone()
    previous = RunFolder(start_from.parents[1], is_main=False).previous_run() if start_from is not None else None

    model = build_model(config)
    _check_same_base(previous, config, model)
    kind, frozen = step_kind(model), encoder_frozen(model)
    if config.gradient_checkpointing and not frozen:
        enable_gradient_checkpointing(model)
    model.to(accelerator.device)
    split = split_and_cache(config, run.root / "cache" if config.cache_dir is None else Path(config.cache_dir),
                            accelerator.is_main_process, accelerator.wait_for_everyone)
    step = make_step(model, config).train()
    data = build_train_loader(config, split, model, kind, frozen, accelerator.num_processes, log,
                              getattr(step, "prompter", None))
    val_cases, test_cases = split.cases("val"), split.cases("test")
    window = split.cache.settings.window

    params = [p for p in step.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, accelerator.num_processes))
    step, optimizer, loader, scheduler = accelerator.prepare(step, optimizer, data.loader, scheduler)
    val_loader = accelerator.prepare(eval_loader(len(val_cases))) if val_cases else None

    progress = Progress(num_processes=accelerator.num_processes)
    accelerator.register_for_checkpointing(progress)
    keep_trainable_only(accelerator)
    if start_from is not None:
        check_checkpoint(start_from, step, accelerator.distributed_type)
        accelerator.load_state(str(start_from), strict=False)
        if progress.num_processes != accelerator.num_processes:
            log(f"warning: {start_from} was written by {progress.num_processes} process(es), this run has "
                f"{accelerator.num_processes}; the continuation will not equal an uninterrupted run")
        run.truncate_metrics(progress.completed_steps)
        run.restore_best(start_from)
        log(f"resuming from {start_from} at step {progress.completed_steps}")
    elif resume is not None:
        run.truncate_metrics(-1)
        log(f"no checkpoint in {run.root} yet; starting from step 0")
    accelerator.init_trackers("samliver", config=_flat(config.to_dict()))
    if config.log_with == "tensorboard" and not accelerator.trackers:
        log("note: TensorBoard is not installed; metrics go to metrics.jsonl only (pip install tensorboard)")

    info = {"config": config.to_dict(), "config_file": config_file, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device), **environment(), "model": config.model, "method": config.method,
            "strategy": getattr(model, "adapter", None), "base_checkpoint": config.checkpoint,
            "base_checkpoint_sha256": model.checkpoint_sha256, "step_kind": kind, "precomputed_embeddings": frozen,
            "trainable_parameters": sum(p.numel() for p in params), "data": split.as_json(),
            "train_slices": data.slices, "steps_per_epoch": data.steps_per_epoch, "status": "running"}
    run.write_json(info)

    def validate() -> None:
        unwrapped = accelerator.unwrap_model(step).model
        result = validation.evaluate(accelerator, unwrapped, kind, val_cases, val_loader, window, config.targets)
        done = progress.completed_steps
        entry = {"step": done, "val/liver_dice": result["liver"], "val/tumor_dice": result["tumor"],
                 "val/score": result["score"]}
        progress.history.append(entry)
        run.append_jsonl("metrics.jsonl", entry)
        accelerator.log({k: v for k, v in entry.items() if k != "step" and v is not None}, step=done)
        score = result["score"]
        if score is not None and (progress.best_score is None or score > progress.best_score):
            progress.best_score, progress.best_step = score, done
            run.save_best(unwrapped, {"trained_steps": done, "val_dice": {c: result[c] for c in validation.CLASSES}})
        accelerator.wait_for_everyone()
        log(f"step {done}: validation Dice liver {_fmt(result['liver'])}, tumour {_fmt(result['tumor'])}")

    if val_loader is not None and config.eval_at_start and progress.completed_steps == 0:
        validate()
    bar = tqdm(total=config.max_steps, initial=progress.completed_steps, desc=f"{config.method} {config.model}",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    micro: list[torch.Tensor] = []
    while progress.completed_steps < config.max_steps:
        epoch, seen = divmod(progress.completed_steps, data.steps_per_epoch)
        data.sampler.use_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, seen * config.gradient_accumulation_steps) if seen else loader
        for batch in batches:
            with accelerator.accumulate(step):
                out = step(batch)
                accelerator.backward(out["loss"])
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append(out["loss"].detach().float())
            if config.debug_batches:
                _log_batch(accelerator, run, progress.completed_steps + 1, batch)
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            done = progress.completed_steps
            bar.update(1)
            if done % config.log_every == 0 or done == config.max_steps:
                # The loss reaches the host (a device sync, and an all-reduce) once per logging interval:
                # the mean over the interval's micro-batches.
                loss = accelerator.reduce(torch.stack(micro).mean(), "mean").item()
                micro.clear()
                bar.set_postfix(loss=f"{loss:.4f}")
                entry = {"step": done, "epoch": epoch, "loss": loss, "lr": scheduler.get_last_lr()[0]}
                run.append_jsonl("metrics.jsonl", entry)
                accelerator.log({"train/loss": loss, "train/lr": entry["lr"]}, step=done)
            if val_loader is not None and config.eval_every and done % config.eval_every == 0:
                validate()
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                run.save_checkpoint(accelerator, done, config.keep_checkpoints)
            if done >= config.max_steps:
                break
    bar.close()
    done = progress.completed_steps
    if val_loader is not None and (not progress.history or progress.history[-1]["step"] != done):
        validate()
    if config.checkpoint_every and not (run.checkpoint_dir(done)).exists():
        run.save_checkpoint(accelerator, done, config.keep_checkpoints)
    final_model = accelerator.unwrap_model(step).model
    if progress.best_step is None:  # no validation cases: the final model is the one exported
        progress.best_step = done
        run.save_best(final_model, {"trained_steps": done})
    info = finish(accelerator, config, run, split, final_model, progress, info, window, log)
    accelerator.end_training()
    return RunResult(run.root, final_model, info)


def _check_same_base(previous: dict[str, Any] | None, config: TrainConfig, model: nn.Module) -> None:
    """A resumed run must continue the same method on the same base model and checkpoint."""
    if previous is None:
        return
    then = (previous.get("method"), previous.get("model"), previous.get("base_checkpoint_sha256"))
    now = (config.method, config.model, model.checkpoint_sha256)
    if then != now:
        raise ConfigError(f"cannot resume: the run was method {then[0]!r} on {then[1]!r} (base sha256 {then[2]}), "
                          f"this one is {now[0]!r} on {now[1]!r} (base sha256 {now[2]})")


def _log_batch(accelerator: Any, run: RunFolder, step: int, batch: dict[str, Any]) -> None:
    """Every process's batch (case, slice) ids, gathered to the main process and written there."""
    from accelerate.utils import gather_object

    mine = [{"step": step, "rank": accelerator.process_index, "cases": list(batch["case"]),
             "slices": [int(s) for s in batch["slice"]]}]
    for entry in gather_object(mine):
        run.append_jsonl("batches.jsonl", entry)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat scalars, as TensorBoard's hparams want."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
