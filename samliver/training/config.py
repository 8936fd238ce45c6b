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
from samliver.prompts.pseudo_labels import ConfidenceFilter
from samliver.prompts.pseudo_sources import PROMPT_SOURCES


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


def _default_descriptions() -> dict:
    return {"liver": ["liver", "the liver", "liver parenchyma", "hepatic tissue"],
            "tumor": ["liver tumor", "liver tumour", "hepatic lesion", "liver lesion", "liver cancer"]}


@dataclasses.dataclass
class TextPromptSettings:
    """CLIP text prompts trained with the decoder (`samliver.prompts.clip_text`); ``--text-prompts``.

    Attributes:
        enabled: attach a trainable text projection and prompt a fraction of the slices by class text.
        model: the open_clip text tower: a model name, ``hf-hub:org/repo`` (in the local Hugging Face
            cache), ``local-dir:PATH`` or an open_clip model-config ``.json``; ``samliver-tiny-text`` is
            the bundled test config.
        checkpoint: its weights: empty for hf-hub/local-dir models, else a local file, a cached
            pretrained tag, or ``random`` (seeded by ``seed``).
        descriptions: class (``liver``, ``tumor``) -> its descriptions; each text-prompted object
            gets one at random; evaluation uses the first.
        prob: chance that a training slice is prompted by text (each of its classes, one object
            each, the whole class as the target) instead of by boxes / clicks.
        num_tokens: sparse decoder tokens per text; hidden: width of the projection's MLP.
    """

    enabled: bool = False
    model: str = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    checkpoint: Union[str, None] = None
    seed: int = 0
    descriptions: dict = dataclasses.field(default_factory=_default_descriptions)
    prob: float = 0.5
    num_tokens: int = 2
    hidden: int = 256


@dataclasses.dataclass
class PseudoLabelSettings:
    """Self-training with pseudo-labels (`samliver.training.self_training`): ``--pseudo-label-rounds N
    --unlabelled DATA``.

    Attributes:
        rounds: pseudo-label rounds after round 0 (labelled cases only); 0 is plain training.
        unlabelled: the unlabelled CTs: a dataset spec or folder (its labels, if any, are never trained on,
            only compared with the pseudo-labels) or a folder of NIfTI files / DICOM series folders.
        prompts: the teacher's first prompts, a registered source (`samliver.prompts.pseudo_sources`):
            ``auto`` (its prompt-free head or default box generator), ``unet:PATH``, ``files:FOLDER``.
        continue_student: each student starts from its teacher's adapter (else from the base model with a
            fresh strategy, as noisy-student training does).
        filter: which teacher masks become pseudo-labels (`ConfidenceFilter`: min_iou, min_stability, ...).
    """

    rounds: int = 0
    unlabelled: Union[str, None] = None
    prompts: str = "auto"
    continue_student: bool = False
    filter: ConfidenceFilter = dataclasses.field(default_factory=ConfidenceFilter)


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
    says), ``gradient_checkpointing`` (recompute each image-encoder block in the backward pass instead of
    storing its activations: less memory for a trained encoder at 1024 px, more time; ignored where the
    encoder is frozen). Prompts: ``prompts`` (`PromptSettings`), ``text_prompts`` (`TextPromptSettings`). Self-training:
    ``pseudo_labels`` (`PseudoLabelSettings`). Schedule: ``eval_every``, ``checkpoint_every``, ``keep_checkpoints``, ``log_every``.
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
    text_prompts: TextPromptSettings = dataclasses.field(default_factory=TextPromptSettings)
    pseudo_labels: PseudoLabelSettings = dataclasses.field(default_factory=PseudoLabelSettings)
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
        check_loop_settings(self)
        if self.embedding_batch_size < 1:
            raise ConfigError(f"embedding_batch_size must be at least 1, got {self.embedding_batch_size}")
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
        check_pseudo_labels(self.pseudo_labels)
        if self.text_prompts.enabled:
            check_text_prompts(self.text_prompts, self.targets)
        check_method(self.method, self.method_config)
        check_model(self.model)
        return self


def check_loop_settings(config: Any) -> None:
    """The step, schedule and logging values every trainer here shares (`TrainConfig`, the box U-Net's
    config); raises ConfigError naming the key."""
    for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(config, key)}")
    for key in ("eval_every", "checkpoint_every", "warmup_steps", "num_workers", "keep_checkpoints"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key} must be 0 or more, got {getattr(config, key)}")
    if not config.lr > 0:
        raise ConfigError(f"lr must be positive, got {config.lr}")
    _choice("scheduler", config.scheduler, ("cosine", "linear", "constant"))
    _choice("mixed_precision", config.mixed_precision, (None, "no", "fp16", "bf16"))
    _choice("log_with", config.log_with, (None, "none", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "all"))


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


def check_text_prompts(t: TextPromptSettings, targets: list) -> None:
    """Text prompt values: prob, token counts, and a description list for each target class."""
    from samliver.errors import PromptError
    from samliver.prompts.clip_text import (CLASS_LABELS, TextTowerError, TextTowerSpec, check_tower_source,
                                            text_classes)

    if not 0.0 <= t.prob <= 1.0 or t.num_tokens < 1 or t.hidden < 1:
        raise ConfigError(f"text_prompts: need 0 <= prob <= 1, num_tokens >= 1, hidden >= 1; got prob {t.prob}, "
                          f"num_tokens {t.num_tokens}, hidden {t.hidden}")
    try:
        described = {c.label for c in text_classes(t.descriptions)}
    except PromptError as exc:
        raise ConfigError(f"text_prompts: {exc}") from None
    missing = [c for c in targets if CLASS_LABELS.get(c) not in described]   # by label: tumour is tumor
    if missing:
        raise ConfigError(f"text_prompts.descriptions: no descriptions for target(s) {', '.join(missing)}")
    try:  # before any data is prepared: the tower's files must be here (nothing is downloaded)
        check_tower_source(TextTowerSpec(t.model, t.checkpoint, t.seed))
    except TextTowerError as exc:
        raise ConfigError(f"text_prompts: {exc}") from None


def check_pseudo_labels(p: PseudoLabelSettings) -> None:
    """Self-training values: rounds, the unlabelled data, and a registered prompt source."""
    if p.rounds < 0:
        raise ConfigError(f"pseudo_labels.rounds must be 0 or more, got {p.rounds}")
    if p.rounds and not p.unlabelled:
        raise ConfigError("pseudo_labels.rounds > 0 needs unlabelled data: pass --unlabelled DATA")
    if p.unlabelled and not p.rounds:
        raise ConfigError(f"pseudo_labels.rounds must be >= 1 when unlabelled data is given "
                          f"({p.unlabelled}); pass --pseudo-label-rounds N, or drop --unlabelled")
    name = p.prompts.partition(":")[0]
    if name not in PROMPT_SOURCES:
        raise ConfigError(f"pseudo_labels.prompts: unknown prompt source {p.prompts!r}"
                          f"{_suggest(name, sorted(PROMPT_SOURCES))}; registered: {', '.join(sorted(PROMPT_SOURCES))}")


def check_model(name: str) -> None:
    """``name`` is a registered model (did-you-mean otherwise)."""
    from samliver.registry import list_models

    known = list_models()
    if name not in known:
        raise ConfigError(f"unknown model {name!r}{_suggest(name, known)}; known: {', '.join(known)}")


def _suggest(word: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
