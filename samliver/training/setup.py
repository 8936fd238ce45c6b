"""The pieces the training loop is built from: the Accelerator, the adapted model, the schedule, the
resumable progress record, and the checkpoint hooks that keep only trained tensors."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import ConfigError, TrainConfig


def open_run(config: Any, resume: str | None) -> tuple[Any, Any, Callable[[str], None], Path | None]:
    """How every training run starts: ``(run folder, Accelerator logging into its logs/, log, checkpoint to
    resume from or None)``, the seed set. ``log`` writes a line on the main process, above the progress bar."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from .run_folder import RunFolder

    run = RunFolder(config.run_dir, is_main=True)
    accelerator = make_accelerator(config, run.root / "logs")
    run.is_main = accelerator.is_main_process

    def log(message: str) -> None:
        if accelerator.is_main_process:
            tqdm.write(message)

    set_seed(config.seed)
    return run, accelerator, log, resume_point(run.root, resume)


def make_accelerator(config: TrainConfig, logging_dir: Path) -> Any:
    """``Accelerator(mixed_precision, gradient_accumulation_steps, log_with)`` for this config.

    Without CUDA it is created with ``cpu=True``: then ``accelerate launch --multi_gpu --num_processes N``
    runs N processes over gloo (a plain ``Accelerator()`` would see no GPU, ignore the launcher's world
    and run each rank as a separate single-process job). DDP gets ``find_unused_parameters``: prompts
    vary from step to step, so some prompt-encoder or decoder parameters go unused in a given step.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import DistributedType, ProjectConfiguration

    cpu = config.cpu or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on the CPU")
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation_steps,
                              log_with=trackers(config.log_with),
                              project_config=ProjectConfiguration(project_dir=str(logging_dir.parent),
                                                                  logging_dir=str(logging_dir)),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              # batches (pinned by the loaders on CUDA) go to the device without a stream sync
                              dataloader_config=DataLoaderConfiguration(non_blocking=True))
    sharded = {DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM}
    if accelerator.distributed_type in sharded:
        raise ConfigError(f"{accelerator.distributed_type.value} is not supported by samliver's loop yet: validation "
                          "and adapter export read whole weights on each process; use DDP "
                          "(configs/accelerate/multi_gpu_ddp.yaml)")
    return accelerator


def trackers(log_with: str | None) -> list[str] | str | None:
    """Accelerate tracker names for ``log_with``, leaving out TensorBoard when it is not installed
    (metrics then still go to ``metrics.jsonl``)."""
    if log_with in (None, "none"):
        return None
    if log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        return "tensorboard" if is_tensorboard_available() else None
    return log_with


def build_model(config: TrainConfig) -> nn.Module:
    """The base model with the strategy applied (or a saved adapter loaded to continue from).

    Raises:
        WeightsNotFoundError / CheckpointError: the base checkpoint is missing or unusable.
        AdapterError: ``adapter`` was made for another base model or checkpoint.
        ConfigError: ``adapter`` was made with another method.
    """
    import samliver
    from samliver.adapters import apply_strategy, load_adapter, read_adapter_config

    model = samliver.load_model(config.model, checkpoint=config.checkpoint)
    if config.adapter:
        saved = read_adapter_config(config.adapter)
        if saved["strategy"] != config.method:
            raise ConfigError(f"{config.adapter}: the adapter was trained with method {saved['strategy']!r}, "
                              f"not {config.method!r}; pass --method {saved['strategy']}")
        load_adapter(model, config.adapter)
    else:
        apply_strategy(model, config.method, config.method_config)
    return model


def lr_lambda(config: TrainConfig, num_processes: int) -> Callable[[int], float]:
    """Warm-up then ``config.scheduler`` decay, as a factor of ``lr``.

    Accelerate's prepared scheduler steps once per process at each optimizer step (its convention
    for data split over processes), so the schedule is laid out in ``steps * num_processes``.
    """
    warm, total = config.warmup_steps * num_processes, config.max_steps * num_processes

    def factor(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        done = min(1.0, (i - warm) / max(1, total - warm))
        if config.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done))
        if config.scheduler == "linear":
            return max(0.0, 1.0 - done)
        return 1.0

    return factor


@dataclass
class Progress:
    """What a checkpoint must remember besides tensors (saved with ``register_for_checkpointing``)."""

    completed_steps: int = 0
    num_processes: int = 1
    best_score: float | None = None
    best_step: int | None = None
    history: list = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def keep_trainable_only(accelerator: Any) -> None:
    """Make ``save_state`` write only trainable tensors (the frozen base is rebuilt from its checkpoint,
    so a LoRA checkpoint of ViT-H is megabytes, not gigabytes)."""
    def hook(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
        for model, state in zip(models, weights):
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in [k for k in state if k not in trainable]:
                del state[key]

    accelerator.register_save_state_pre_hook(hook)


def check_checkpoint(path: Path, step_module: nn.Module, distributed_type: Any = None) -> None:
    """The checkpoint holds every trainable tensor of ``step_module`` (else it was made by another setup).
    Sharded (FSDP, DeepSpeed) checkpoints have their own layout and are left to Accelerate to check."""
    from accelerate.utils import DistributedType
    from safetensors import safe_open

    file = path / "model.safetensors"
    if distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    if not file.is_file():
        raise ConfigError(f"{path}: not a samliver training checkpoint (no model.safetensors)")
    with safe_open(str(file), framework="pt") as handle:
        saved = set(handle.keys())
    wanted = {name for name, p in step_module.named_parameters() if p.requires_grad}
    missing = sorted(wanted - saved)
    if missing or saved - wanted:
        raise ConfigError(f"{path}: the checkpoint's tensors do not fit this model and method (missing "
                          f"{missing[:2]}, unexpected {sorted(saved - wanted)[:2]}); was it made by another run?")


def resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: ``latest`` (the newest in ``run_dir``), a checkpoint folder, or a
    run folder (its newest); None when ``resume`` is None or no checkpoint exists yet."""
    from .run_folder import RunFolder

    if resume is None:
        return None
    target = Path(run_dir if resume == "latest" else resume)
    if resume != "latest" and not target.exists():
        raise ConfigError(f"--resume {resume}: no such checkpoint or run folder")
    if (target / "model.safetensors").is_file():
        return target
    return RunFolder(target, is_main=False).latest_checkpoint()


def weights_digest(model: nn.Module) -> str:
    """sha256 over the trainable tensors (name, bytes), to compare processes' copies."""
    import hashlib

    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """Versions and the launcher's view, for run.json."""
    import accelerate
    import monai

    import samliver

    return {"samliver_version": samliver.__version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "monai": monai.__version__, "cuda": torch.cuda.is_available(),
            "launcher_world_size": int(os.environ.get("WORLD_SIZE", "1"))}
