"""Training the box U-Net (`samliver.prompts.unet_boxes`) in an Accelerate loop.

The pieces are the adapter trainer's: `open_run` (run folder, Accelerator, seed), `lr_lambda`, `Progress` /
`check_checkpoint` (`samliver.training.setup`), the case split and slice cache (`split_and_cache`, built at the
network's input size and window, so cached slices are the network's input), seeded `EpochDraws` with tumour
oversampling and per-item augmentation seeds (`samliver.training.data`), MONAI augmentation, and the
`RunFolder`. The loss is MONAI's Dice-CE (or Dice-focal) over background / liver / tumour (`make_loss`).

Run folder (``output_dir``): ``run.json``, ``metrics.jsonl``, ``checkpoints/step_NNNNNN/`` (resumable),
``checkpoints/best/`` (best by validation Dice), ``box_unet.safetensors`` + ``box_unet.json`` (the best U-Net,
with its training record and held-out box recall), ``report.md``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from samliver.data import SliceDataset, build_augment
from samliver.errors import CheckpointError
from samliver.prompts.unet_boxes import UNetBoxGenerator, load_box_generator
from samliver.prompts.unet_model import build_unet, stacks

from .box_unet_config import BoxUNetTrainConfig
from .box_unet_report import fmt, held_out_test, recall_table, report, training_record
from .config import ConfigError
from .data import EpochDraws, eval_loader, item_seed, split_and_cache
from .run_folder import RunFolder, replace_dir
from .setup import Progress, environment, lr_lambda, open_run
from .validation import dice_per_class, summarize

EXPORTS = ("box_unet.safetensors", "box_unet.json", "report.md")


def make_loss(name: str, class_weights: Sequence[float], dice_batch: bool) -> nn.Module:
    """MONAI ``DiceCELoss`` / ``DiceFocalLoss`` over background / liver / tumour (softmax, one-hot targets), with
    ``class_weights`` on the CE / focal term. ``dice_batch``: Dice over the whole batch (MONAI ``batch=True``:
    large lesions dominate) rather than per slice (each slice's lesions count alike, small ones included)."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    weight = torch.tensor([float(w) for w in class_weights])
    kind = {"dice_ce": DiceCELoss, "dice_focal": DiceFocalLoss}[name]
    return kind(to_onehot_y=True, softmax=True, batch=bool(dice_batch), weight=weight)


@dataclass
class BoxRunResult:
    """What `train_box_unet` returns: the run folder, the best generator (loaded back from its files), run.json."""

    run_dir: Path
    generator: UNetBoxGenerator
    info: dict[str, Any]


class SliceItems(Dataset):
    """`SliceDataset` items keyed by `EpochDraws` keys ``(epoch, position, index)``: ``image`` ``(C, S, S)``
    (C = 2 * context + 1 adjacent slices in [0, 1]) and ``label`` ``(S, S)`` int64, augmented with a stream
    seeded from ``(seed, epoch, position)`` only (so a resumed run sees the same batches).

    With ``crop``, each item is a ``crop x crop`` window (the U-Net is fully convolutional, so it trains on
    windows and runs on whole slices): MONAI ``RandCropByLabelClassesd`` centres it on a background, liver or
    tumour pixel with probabilities proportional to ``ratios`` (classes absent from the slice are skipped).
    """

    def __init__(self, slices: SliceDataset, seed: int, crop: int | None = None,
                 ratios: Sequence[float] = (1.0, 1.0, 2.0)) -> None:
        from monai.transforms import RandCropByLabelClassesd

        self.slices, self.seed = slices, int(seed)
        self.crop = None if crop is None else RandCropByLabelClassesd(
            keys=("image", "label"), label_key="label", spatial_size=(int(crop), int(crop)),
            ratios=[float(r) for r in ratios], num_classes=3, num_samples=1, warn=False)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        epoch, position, index = (int(k) for k in key)
        if self.slices.augment is not None:
            self.slices.augment.set_random_state(item_seed(self.seed, epoch, position, 1))
        item = self.slices[index]
        image, label = item["image"], item["label"]
        if self.crop is not None:
            self.crop.set_random_state(item_seed(self.seed, epoch, position, 3))
            window = self.crop({"image": image, "label": label[None]})[0]
            image = torch.as_tensor(window["image"]).as_subclass(torch.Tensor)
            label = torch.as_tensor(window["label"]).as_subclass(torch.Tensor)[0].long()
        return {"image": image, "label": label}


def _collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([it[key] for it in items]) for key in ("image", "label")}


def predict_cached(net: nn.Module, grey: np.ndarray, context: int, batch_size: int = 16) -> np.ndarray:
    """Argmax class map ``(Z, S, S)`` uint8 of a cached case's slices ``grey`` ``(Z, S, S)`` uint8 (the cache
    holds exactly the network's input)."""
    device = next(net.parameters()).device
    out = np.empty(grey.shape, np.uint8)
    with torch.no_grad():
        for start in range(0, grey.shape[0], batch_size):
            idx = range(start, min(start + batch_size, grey.shape[0]))
            out[start:idx.stop] = net(stacks(grey, idx, context).to(device)).argmax(1).cpu().numpy()
    return out


def train_box_unet(config: BoxUNetTrainConfig, resume: str | None = None, overwrite: bool = False,
                   config_file: str | None = None) -> BoxRunResult:
    """Train a box U-Net as ``config`` says; see the module docstring for what the run folder holds."""
    from tqdm.auto import tqdm

    run, accelerator, log, start_from = open_run(config, resume)
    spec = config.spec()
    net = build_unet(spec)
    init_record = _start_from(net, spec, config.init) if config.init and start_from is None else None
    run.start(resume is not None, overwrite)
    if overwrite and resume is None and accelerator.is_main_process:
        for name in EXPORTS:
            (run.root / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if start_from is not None:
        previous = RunFolder(start_from.parents[1], is_main=False).previous_run()
        _check_same_network(previous, spec.to_json())
        init_record = (previous or {}).get("init")      # a resumed run keeps where its first weights came from
    net.to(accelerator.device)
    cache_root = run.root / "cache" if config.cache_dir is None else Path(config.cache_dir)
    split = split_and_cache(replace(config, cache=config.cache_settings()), cache_root,
                            accelerator.is_main_process, accelerator.wait_for_everyone)
    augment = build_augment(None if config.augment is True else config.augment) if config.augment else None
    slices = SliceDataset(split.cache, split.train, stack_depth=spec.in_channels, augment=augment, with_objects=False)
    per_step = config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    steps_per_epoch = max(1, math.ceil(len(slices) / per_step))
    sampler = EpochDraws(np.arange(len(slices)), slices.tumor_flags, config.tumor_fraction,
                         steps_per_epoch * per_step, config.seed)
    items = SliceItems(slices, config.seed, config.crop, config.crop_ratios)
    loader = DataLoader(items, batch_size=config.batch_size, sampler=sampler, collate_fn=_collate,
                        num_workers=config.num_workers, pin_memory=torch.cuda.is_available())
    val_cases = split.cases("val")

    loss_fn = make_loss(config.loss, config.class_weights, config.dice_batch).to(accelerator.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, accelerator.num_processes))
    net, optimizer, loader, scheduler = accelerator.prepare(net, optimizer, loader, scheduler)
    val_loader = accelerator.prepare(eval_loader(len(val_cases))) if val_cases else None
    progress = Progress(num_processes=accelerator.num_processes)
    accelerator.register_for_checkpointing(progress)
    if start_from is not None:
        _check_checkpoint(start_from, accelerator.unwrap_model(net))
        accelerator.load_state(str(start_from))
        run.truncate_metrics(progress.completed_steps)
        run.restore_best(start_from)
        log(f"resuming from {start_from} at step {progress.completed_steps}")
    elif resume is not None:
        run.truncate_metrics(-1)
    accelerator.init_trackers("samliver_box_unet", config={"max_steps": config.max_steps, "lr": config.lr,
                                                           "batch_size": config.batch_size})
    info = {"kind": "box-unet", "config": config.to_dict(), "config_file": config_file,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type), "device": str(accelerator.device),
            **environment(), "network": spec.to_json(),
            "parameters": sum(p.numel() for p in accelerator.unwrap_model(net).parameters()),
            "data": split.as_json(), "train_slices": len(slices), "steps_per_epoch": steps_per_epoch,
            "status": "running", **({"init": init_record} if init_record is not None else {})}
    run.write_json(info)

    def validate() -> None:
        unwrapped = accelerator.unwrap_model(net).eval()
        rows = []
        for batch in val_loader:
            case = val_cases[int(batch[0])]
            pred = predict_cached(unwrapped, np.array(case.image), spec.context)
            row = torch.tensor([[float(batch[0]), *dice_per_class(pred, np.array(case.label))]],
                               device=accelerator.device)
            rows.append(accelerator.gather_for_metrics(row))
        unwrapped.train()
        table = torch.cat(rows).cpu().numpy()
        result = summarize({val_cases[int(r[0])].name: [float(r[1]), float(r[2])] for r in table}, ("liver", "tumor"))
        done = progress.completed_steps
        entry = {"step": done, "val/liver_dice": result["liver"], "val/tumor_dice": result["tumor"],
                 "val/score": result["score"]}
        progress.history.append(entry)
        run.append_jsonl("metrics.jsonl", entry)
        accelerator.log({k: v for k, v in entry.items() if k != "step" and v is not None}, step=done)
        if result["score"] is not None and (progress.best_score is None or result["score"] > progress.best_score):
            progress.best_score, progress.best_step = result["score"], done
            _save_best(run, unwrapped, spec, config)
        accelerator.wait_for_everyone()
        log(f"step {done}: validation Dice liver {fmt(result['liver'])}, tumour {fmt(result['tumor'])}")

    net.train()
    bar = tqdm(total=config.max_steps, initial=progress.completed_steps, desc="box-unet",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    micro: list[torch.Tensor] = []
    while progress.completed_steps < config.max_steps:
        epoch, seen = divmod(progress.completed_steps, steps_per_epoch)
        sampler.use_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, seen * config.gradient_accumulation_steps) if seen else loader
        for batch in batches:
            with accelerator.accumulate(net):
                loss = loss_fn(net(batch["image"]).float(), batch["label"][:, None])
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(net.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            progress.completed_steps += 1
            done = progress.completed_steps
            mean = accelerator.reduce(torch.stack(micro).mean(), "mean").item()
            micro.clear()
            bar.update(1)
            bar.set_postfix(loss=f"{mean:.4f}")
            if done % config.log_every == 0 or done == config.max_steps:
                entry = {"step": done, "epoch": epoch, "loss": mean, "lr": scheduler.get_last_lr()[0]}
                run.append_jsonl("metrics.jsonl", entry)
                accelerator.log({"train/loss": mean, "train/lr": entry["lr"]}, step=done)
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
    if config.checkpoint_every and not run.checkpoint_dir(done).exists():
        run.save_checkpoint(accelerator, done, config.keep_checkpoints)
    if progress.best_step is None:  # no validation cases: the final U-Net is the one exported
        progress.best_step = done
        _save_best(run, accelerator.unwrap_model(net), spec, config)
    accelerator.wait_for_everyone()
    info.update(status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), steps=done,
                best_step=progress.best_step, best_val_score=progress.best_score, validation=progress.history)
    generator = load_box_generator(run.best, device=accelerator.device, **config.boxes)   # this config's settings
    if accelerator.is_main_process:
        if config.final_test and config.test_data:
            info["test"] = held_out_test(generator, config.test_data)
            log(recall_table(info["test"]))
        record = training_record(config, info)
        generator.save(run.root, training=record)
        if config.export:
            info["exported"] = str(generator.save(config.export, training=record))
            log(f"exported the box U-Net to {info['exported']}")
        run.write_json(info)
        run.write_text("report.md", report(info))
        log(f"run folder: {run.root} (box_unet.safetensors + box_unet.json, run.json, report.md)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return BoxRunResult(run.root, load_box_generator(run.root, device=accelerator.device), info)


def _save_best(run: RunFolder, net: nn.Module, spec: Any, config: BoxUNetTrainConfig) -> None:
    """The U-Net's two files into ``checkpoints/best`` (the whole folder replaced at once)."""
    if not run.is_main:
        return
    tmp = run.checkpoints / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    UNetBoxGenerator(net, spec, **config.boxes, device=next(net.parameters()).device).save(tmp)
    net.train()
    replace_dir(tmp, run.best)


def _start_from(net: nn.Module, spec: Any, path: str) -> dict[str, Any]:
    """Load the weights of the saved box U-Net ``path`` into ``net`` (same network); returns where they came
    from: the path, its file's sha256 and its own training record."""
    from samliver.prompts.unet_model import file_pair
    from samliver.weights_store import sha256_file

    try:
        start = load_box_generator(path, input_size=spec.input_size, in_channels=spec.in_channels)
    except CheckpointError as exc:
        raise ConfigError(f"init: {exc}") from None
    if start.spec.to_json() != spec.to_json():
        raise ConfigError(f"init {path}: that U-Net is {start.spec.to_json()}, this config's network is "
                          f"{spec.to_json()}")
    net.load_state_dict(start.net.state_dict())
    return {"path": str(path), "sha256": sha256_file(file_pair(path)[0]), "training": start.record.get("training")}


def _check_checkpoint(path: Path, net: nn.Module) -> None:
    """``path`` holds this U-Net's whole state (weights and, with batch norm, running statistics)."""
    from safetensors import safe_open

    file = path / "model.safetensors"
    if not file.is_file():
        raise ConfigError(f"{path}: not a samliver training checkpoint (no model.safetensors)")
    with safe_open(str(file), framework="pt") as handle:
        saved = set(handle.keys())
    wanted = set(net.state_dict())
    if saved != wanted:
        raise ConfigError(f"{path}: the checkpoint's tensors do not fit this U-Net "
                          f"(missing {sorted(wanted - saved)[:2]}, "
                          f"unexpected {sorted(saved - wanted)[:2]}); was it made by another run?")


def _check_same_network(previous: dict[str, Any] | None, network: dict[str, Any]) -> None:
    if previous is not None and previous.get("network") not in (None, network):
        raise ConfigError(f"cannot resume: the run trained the U-Net {previous['network']}, this config asks for "
                          f"{network}")


__all__ = ["BoxRunResult", "train_box_unet"]
