"""The training configuration: `TrainConfig`, a dataclass of everything a run needs.

It is resolved as defaults <- YAML file <- command-line overrides by `samliver.training.resolution.resolve`; the
defaults are the default main job (``configs/train/lora.yaml``). `TrainConfig.validate` checks values,
the method and its ``method_config`` keys against the strategy registry, and the model against the zoo,
naming the closest known key where one is misspelt.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Mapping, Union

from samliver.errors import SamliverError


class ConfigError(SamliverError, ValueError):
    """A training config key or value is wrong (the message names it and, where it can, the fix)."""


@dataclasses.dataclass
class PromptSettings:
    """How prompts are simulated from the ground truth during prompted training (SAM-style).

    Attributes:
        box_prob: chance that a slice's objects are prompted with boxes (else with clicks).
        box_jitter: each box side moves by a uniform offset of up to this fraction of the box side...
        box_jitter_max_px: ...but never more than this many pixels (SAM: 10 % of the side, at most 20 px).
        max_points: point prompts get 1..max_points positive clicks, uniform inside the object.
        max_negative_points: and 0..max_negative_points negative clicks from the background near it.
        corrective_clicks: extra decoder rounds per step, each adding one click from the previous
            error (positive in a miss, negative in a false positive) and the previous mask logits.
        max_objects: at most this many objects per slice (a random subset beyond it).
        multimask: single-click prompts decode 3 masks and the loss takes the best one (SAM's ambiguity
            handling; pair it with an IoU-prediction loss so inference can pick).
    """

    box_prob: float = 0.5
    box_jitter: float = 0.1
    box_jitter_max_px: float = 20.0
    max_points: int = 3
    max_negative_points: int = 1
    corrective_clicks: int = 0
    max_objects: int = 8
    multimask: bool = False


@dataclasses.dataclass
class LossSettings:
    """Loss weights (MONAI losses by name; see `samliver.training.losses`).

    Attributes:
        dice, bce, focal, tversky: weights of the mask losses of prompted training (0 leaves one out).
        iou: weight of the IoU-prediction MSE (the decoder's predicted IoU against the mask's real IoU).
        head: the prompt-free head's multi-class loss: ``dice_ce`` or ``dice_focal``.
    """

    dice: float = 1.0
    bce: float = 1.0
    focal: float = 0.0
    tversky: float = 0.0
    iou: float = 0.0
    head: str = "dice_ce"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; `run.json` records the resolved copy.

    Model and strategy: ``method`` (a registered strategy), ``method_config`` (its config),
    ``model``, ``checkpoint`` (None: the weights folders; ``"random"``; a path), ``adapter`` (a saved
    adapter to continue from). Data: ``data`` / ``test_data`` (dataset specs, `load_dataset`),
    ``split`` (train, val[, test] fractions by case) or ``split_file``, ``targets``, ``cache_dir``
    (default ``<output_dir>/cache``), ``cache`` (`CacheSettings` fields), ``augment`` (True: defaults,
    False: none, or a `build_augment` config), ``tumor_fraction``. Optimisation: ``max_steps`` (optimizer
    steps), ``batch_size`` (per process), ``lr``, ``scheduler`` (cosine, linear, constant; after
    ``warmup_steps``), ``gradient_accumulation_steps``, ``mixed_precision`` (None: as ``accelerate launch``
    says). Schedule: ``eval_every``, ``checkpoint_every``, ``keep_checkpoints``, ``log_every``.
    """

    method: str = "lora"
    method_config: dict = dataclasses.field(default_factory=dict)
    model: str = "samliver_tiny"
    checkpoint: Union[str, None] = None
    adapter: Union[str, None] = None
    data: str = "phantom:liver-tumor?n=12&seed=0"
    test_data: Union[str, None] = "phantom:liver-tumor?n=4&seed=1000"
    split: list = dataclasses.field(default_factory=lambda: [0.75, 0.25])
    split_file: Union[str, None] = None
    split_seed: int = 0
    targets: list = dataclasses.field(default_factory=lambda: ["liver", "tumor"])
    cache_dir: Union[str, None] = None
    cache: dict = dataclasses.field(default_factory=dict)
    augment: Union[bool, dict] = True
    tumor_fraction: Union[float, None] = 0.5
    num_workers: int = 0
    prompts: PromptSettings = dataclasses.field(default_factory=PromptSettings)
    loss: LossSettings = dataclasses.field(default_factory=LossSettings)
    max_steps: int = 200
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    scheduler: str = "cosine"
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: Union[str, None] = None
    gradient_checkpointing: bool = False
    embedding_batch_size: int = 8
    eval_every: int = 50
    eval_at_start: bool = True
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    output_dir: str = "runs/{method}"
    seed: int = 0
    log_with: Union[str, None] = "tensorboard"
    final_test: bool = True
    debug_batches: bool = False
    cpu: bool = False
    export_base: Union[str, None] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        """The run folder: ``output_dir`` with ``{method}`` / ``{model}`` filled in."""
        return Path(self.output_dir.format(method=self.method, model=self.model))

    def validate(self) -> "TrainConfig":
        """Check values that do not depend on files; raises ConfigError naming the key."""
        positive = ("max_steps", "batch_size", "gradient_accumulation_steps", "embedding_batch_size", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        for key in ("eval_every", "checkpoint_every", "warmup_steps", "num_workers", "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be 0 or more, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        _choice("scheduler", self.scheduler, ("cosine", "linear", "constant"))
        _choice("mixed_precision", self.mixed_precision, (None, "no", "fp16", "bf16"))
        _choice("log_with", self.log_with, (None, "none", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "all"))
        _choice("loss.head", self.loss.head, ("dice_ce", "dice_focal"))
        if self.tumor_fraction is not None and not 0.0 <= self.tumor_fraction <= 1.0:
            raise ConfigError(f"tumor_fraction must lie in [0, 1], got {self.tumor_fraction}")
        if len(self.split) not in (2, 3) or not abs(sum(self.split) - 1.0) < 1e-6 or min(self.split) < 0:
            raise ConfigError(f"split must be 2 or 3 fractions (train, val[, test]) summing to 1, got {self.split}")
        p = self.prompts
        if not (0 <= p.box_prob <= 1 and p.box_jitter >= 0 and p.max_points >= 1 and p.max_objects >= 1
                and p.max_negative_points >= 0 and p.corrective_clicks >= 0):
            raise ConfigError(f"prompts: need 0 <= box_prob <= 1, box_jitter >= 0, max_points >= 1, "
                              f"max_objects >= 1, corrective_clicks >= 0; got {dataclasses.asdict(p)}")
        if min(self.loss.dice, self.loss.bce, self.loss.focal, self.loss.tversky, self.loss.iou) < 0 or \
                self.loss.dice + self.loss.bce + self.loss.focal + self.loss.tversky == 0:
            raise ConfigError("loss: weights must be >= 0 and at least one mask loss positive")
        check_method(self.method, self.method_config)
        check_model(self.model)
        return self


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(str(a) for a in allowed)}")


def check_method(method: str, method_config: Mapping[str, Any]) -> None:
    """The method is registered and its config keys exist (did-you-mean for both)."""
    from samliver.adapters import get_strategy, list_strategies

    known = list_strategies()
    if method not in known:
        raise ConfigError(f"unknown method {method!r}{_suggest(method, known)}; registered: {', '.join(known)}")
    fields = [f.name for f in dataclasses.fields(get_strategy(method).config_class)]
    for key in method_config:
        if key not in fields:
            raise ConfigError(f"unknown method_config key {key!r} for method {method!r}{_suggest(key, fields)}; "
                              f"known: {', '.join(fields)}")


def check_model(name: str) -> None:
    """``name`` is a registered model (did-you-mean otherwise)."""
    from samliver.registry import list_models

    known = list_models()
    if name not in known:
        raise ConfigError(f"unknown model {name!r}{_suggest(name, known)}; known: {', '.join(known)}")


def _suggest(word: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
