"""Config and command line of ``train_box_unet.py``: the box U-Net (`samliver.prompts.unet_boxes`).

It is resolved like `TrainConfig` (`samliver.training.resolution`): defaults <- YAML (``--config``, default the
preset ``configs/box_unet/phantom.yaml``) <- flags. The shared flags are `samliver.training.cli.OPTIONS` whose
keys this config has (``--data``, ``--max-steps``, ``--output-dir``, ...); ``--input-size``, ``--context`` and
``--export`` are the U-Net's own. The box U-Net is not an adaptation strategy of a promptable model, so it has
its own entry point rather than a ``--method`` of ``train_adapter.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Union

import numpy as np

from .cli import OPTIONS, option_overrides, run_entry_point
from .config import ConfigError, _choice, check_loop_settings
from .resolution import _build, dotted, merge, parse_assignment, read_yaml

#: the default config; not under configs/train/, whose presets are `train_adapter.py` configs
PRESET = "phantom"


@dataclasses.dataclass
class BoxUNetTrainConfig:
    """Everything a box U-Net run needs; ``run.json`` records the resolved copy.

    ``network``: `BoxUNetSpec` fields (input_size, context, window, channels, strides, num_res_units, norm,
    dropout); the slice cache is built at the network's input size and window (``cache`` may add ``dtype``).
    ``crop``: train on ``crop x crop`` windows of the ``input_size`` slices, centred on background / liver /
    tumour pixels in proportion to ``crop_ratios`` (validation and inference use whole slices); None: whole slices.
    ``loss``: ``dice_ce`` or ``dice_focal`` (`samliver.training.box_unet.make_loss`), ``class_weights`` on its CE /
    focal term, ``dice_batch`` Dice over the whole batch instead of per slice. ``boxes``: the generator's saved
    defaults (threshold, margin_mm, min_area_mm2, min_slices); the held-out
    box recall at the end of the run uses them. ``init``: start from the weights of a saved box U-Net
    (folder or ``NAME.safetensors``) with this ``network`` (fine-tuning on more data); its training
    record is kept in the new one. ``export``: also write the best U-Net to this folder or
    ``NAME.safetensors`` path. The rest as in `TrainConfig`; ``tumor_fraction`` oversamples tumour slices
    among all slices (background slices included: they teach the U-Net where there is nothing to box).
    """

    data: str = "phantom:liver-tumor?n=40&seed=2000"
    test_data: Union[str, None] = "phantom:liver-tumor?n=8&seed=3000"
    split: list = dataclasses.field(default_factory=lambda: [0.9, 0.1])
    split_file: Union[str, None] = None
    split_seed: int = 0
    cache_dir: Union[str, None] = None
    cache: dict = dataclasses.field(default_factory=dict)
    network: dict = dataclasses.field(default_factory=dict)
    boxes: dict = dataclasses.field(default_factory=dict)
    crop: Union[int, None] = None
    crop_ratios: list = dataclasses.field(default_factory=lambda: [1.0, 1.0, 2.0])
    augment: Union[bool, dict] = dataclasses.field(default_factory=lambda: {"flip": True, "shift": True, "noise": True})
    tumor_fraction: Union[float, None] = 0.5
    loss: str = "dice_ce"
    class_weights: list = dataclasses.field(default_factory=lambda: [1.0, 1.0, 5.0])
    dice_batch: bool = False
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    scheduler: str = "cosine"
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: Union[str, None] = None
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    output_dir: str = "runs/box_unet"
    seed: int = 0
    log_with: Union[str, None] = "tensorboard"
    num_workers: int = 0
    cpu: bool = False
    final_test: bool = True
    export: Union[str, None] = None
    init: Union[str, None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)

    def spec(self) -> Any:
        """The `BoxUNetSpec` of ``network``."""
        from samliver.prompts.unet_model import BoxUNetSpec

        return BoxUNetSpec.from_json(self.network)

    def cache_settings(self) -> dict[str, Any]:
        """Slice cache settings: the network's input size and window, plus ``cache`` (``dtype`` only)."""
        spec = self.spec()
        return {**self.cache, "size": spec.input_size, "window": list(spec.window)}

    def validate(self) -> "BoxUNetTrainConfig":
        """Check values that do not depend on files; raises ConfigError naming the key."""
        from samliver.errors import PromptError
        from samliver.prompts.unet_boxes import DEFAULT_THRESHOLD, SAVED_PARAMS, check_hysteresis, check_params

        check_loop_settings(self)
        _choice("loss", self.loss, ("dice_ce", "dice_focal"))
        if len(self.class_weights) != 3 or not all(isinstance(w, (int, float)) and w > 0 for w in self.class_weights):
            raise ConfigError(f"class_weights: need 3 positive weights (background, liver, tumour), "
                              f"got {self.class_weights}")
        if self.tumor_fraction is not None and not 0.0 <= self.tumor_fraction <= 1.0:
            raise ConfigError(f"tumor_fraction must lie in [0, 1], got {self.tumor_fraction}")
        if len(self.split) not in (2, 3) or not abs(sum(self.split) - 1.0) < 1e-6 or min(self.split) < 0:
            raise ConfigError(f"split must be 2 or 3 fractions (train, val[, test]) summing to 1, got {self.split}")
        try:
            self.spec()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"network: {exc}") from None
        if self.crop is not None:
            spec, factor = self.spec(), int(np.prod(self.spec().strides))
            if not (factor <= self.crop <= spec.input_size and self.crop % factor == 0):
                raise ConfigError(f"crop: need a multiple of {factor} (the product of network.strides) up to "
                                  f"network.input_size {spec.input_size}, got {self.crop}")
        if len(self.crop_ratios) != 3 or min(self.crop_ratios) < 0 or sum(self.crop_ratios) <= 0:
            raise ConfigError(f"crop_ratios: need 3 weights >= 0 (background, liver, tumour), got {self.crop_ratios}")
        taken = sorted(set(self.cache) - {"dtype"})
        if taken:
            raise ConfigError(f"cache.{taken[0]}: set by the network (input_size, window); "
                              "only cache.dtype may be given")
        unknown = sorted(set(self.boxes) - set(SAVED_PARAMS))
        if unknown:
            raise ConfigError(f"unknown boxes key {unknown[0]!r}; known: {', '.join(SAVED_PARAMS)}")
        try:
            check_params(**self.boxes)
            check_hysteresis(self.boxes.get("threshold", DEFAULT_THRESHOLD), self.boxes.get("low_threshold"))
        except PromptError as exc:
            raise ConfigError(f"boxes.{exc}") from None
        return self


def resolve_box_unet(config_file: str | Path | None, overrides: dict[str, Any]) -> tuple[BoxUNetTrainConfig, str]:
    """The validated config from ``config_file`` (default: ``configs/box_unet/phantom.yaml``) and overrides;
    returns ``(config, the file used)``."""
    if config_file is None:
        from samliver import configs

        config_file = configs.path("box_unet", PRESET)
    used = str(config_file)
    values = merge(read_yaml(used), overrides)
    return _build(BoxUNetTrainConfig, values).validate(), used


_FIELDS = {f.name for f in dataclasses.fields(BoxUNetTrainConfig)}
#: the `train_adapter.py` options this config shares, plus the U-Net's own
BOX_OPTIONS = tuple(o for o in OPTIONS if o[1] in _FIELDS) + (
    (("--export",), "export", str, "also write the best U-Net to this folder or NAME.safetensors path"),
    (("--input-size", "--input_size"), "network.input_size", int, "U-Net input size in pixels (square)"),
    (("--context",), "network.context", int, "adjacent slices on each side as extra channels (0: 2D)"),
)
_NULLABLE = ("test_data", "cache_dir", "log_with", "mixed_precision", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train_box_unet.py", allow_abbrev=False,
                                     description="Train the box U-Net that gives automatic box prompts "
                                                 "(samliver.prompts.unet_boxes) with Accelerate.")
    parser.add_argument("--config", help=f"YAML config (a path or a preset name); default: configs/box_unet/{PRESET}.yaml")
    for flags, key, kind, text in BOX_OPTIONS:
        parser.add_argument(*flags, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config value by dotted key, e.g. boxes.margin_mm=5; repeatable")
    parser.add_argument("--resume", "--resume-from-checkpoint", "--resume_from_checkpoint", nargs="?",
                        const="latest", default=None, metavar="PATH",
                        help="continue from the newest checkpoint of the run folder, or from PATH")
    parser.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    parser.add_argument("--cpu", action="store_true", default=None, help="train on the CPU even where CUDA is present")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from parsed flags (only those given)."""
    out = option_overrides(args, BOX_OPTIONS, _NULLABLE)
    if args.cpu:
        out["cpu"] = True
    for text in args.set:
        key, value = parse_assignment(text, "--set")
        out = merge(out, dotted(key, value))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, resolve, train. Returns the exit status (2 for a user mistake, one line on stderr)."""

    def go(args: argparse.Namespace) -> None:
        config, used = resolve_box_unet(args.config, overrides_from(args))
        from .box_unet import train_box_unet

        train_box_unet(config, resume=args.resume, overwrite=args.overwrite, config_file=used)

    return run_entry_point("train_box_unet.py", build_parser(), argv, go)
