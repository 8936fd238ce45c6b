"""Training: adapt a promptable model with an interchangeable strategy, in an Accelerate loop.

``accelerate launch train_adapter.py --method lora`` (or ``python train_adapter.py ...``) runs
`samliver.training.cli.main`: the config (`TrainConfig`: defaults <- ``configs/train/<method>.yaml`` or
``--config`` <- flags) -> `train` (`samliver.training.loop`) -> a run folder
(`samliver.training.run_folder`) with ``run.json``, ``metrics.jsonl``, resumable ``checkpoints/``, the best
adapter (``adapter_model.safetensors`` + ``adapter_config.json``) and ``report.md``.

Modules: ``config`` (the dataclass config), ``resolution`` (YAML + overrides, did-you-mean), ``data``
(split, cache, seeded draws), ``prompting`` (prompts simulated from ground truth), ``losses`` (MONAI
losses by name), ``steps`` (one step per model kind), ``validation`` (3D Dice through the Predictor),
``setup`` / ``loop`` / ``finish`` (the Accelerate run), ``run_folder`` (what is written, atomically, by
the main process).
"""

from .cli import main
from .config import ConfigError, LossSettings, PromptSettings, TrainConfig
from .resolution import resolve

__all__ = ["ConfigError", "LossSettings", "PromptSettings", "RunResult", "TrainConfig", "export_base", "main",
           "resolve", "train"]


def __getattr__(name: str):
    # The loop imports accelerate and the model zoo; `--help` and config errors stay fast without them.
    if name in ("train", "RunResult"):
        from . import loop

        return getattr(loop, name)
    if name == "export_base":
        from .finish import export_base

        return export_base
    raise AttributeError(f"module 'samliver.training' has no attribute {name!r}")
