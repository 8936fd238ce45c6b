"""Adaptation strategies: a dataclass config plus `apply`, registered by name (as peft
registers its tuners). Nothing outside this registry branches on strategy names.

A strategy freezes the base model and injects or unfreezes what it trains; the registry
knows which tensors it trains, so a saved adapter holds only those.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from samliver.errors import SamliverError

_STRATEGIES: dict[str, type["Strategy"]] = {}


class AdapterError(SamliverError, ValueError):
    """An unknown strategy or config key, a strategy that cannot apply to a model, or an
    adapter saved for another base model."""


@dataclasses.dataclass
class StrategyConfig:
    """Base of every strategy's config; subclasses add typed fields with defaults."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "StrategyConfig":
        """Build from a plain dict (YAML/JSON); unknown keys are refused by name."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise AdapterError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


class Strategy(ABC):
    """One way to adapt a `PromptableSegmenter`.

    Subclasses set ``name`` and ``config_class`` and implement `apply`. The default
    `trainable_state_dict` saves every parameter left trainable by `apply`, under its
    name in ``model.named_parameters()``; strategies with their own key conventions
    (LoRA keeps peft's) override it together with `load_trainable_state_dict`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]
    #: False where `apply` injects modules (LoRA, depth adapters): copies of the base modules,
    #: such as SAM 2's video model, can then not take the adapted weights.
    preserves_module_structure: ClassVar[bool] = True

    @abstractmethod
    def apply(self, model: nn.Module, config: StrategyConfig) -> nn.Module:
        """Freeze ``model`` and inject/unfreeze what this strategy trains, in place; returns it.

        Raises AdapterError where the combination cannot work (saying why)."""

    def attaches_task_head(self, config: StrategyConfig) -> bool:
        """Whether `apply` with ``config`` gives the model a prompt-free ``model.task_head`` (known without
        building a model: self-training asks before round 0 whether its teacher will segment on its own)."""
        return False

    def trainable_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors this strategy trains (detached, contiguous, on the CPU)."""
        return {k: p.detach().cpu().contiguous() for k, p in model.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by `trainable_state_dict` into an applied model, strictly."""
        params = dict(model.named_parameters())
        expected = {k for k, p in params.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise AdapterError(f"adapter weights do not fit the {self.name} strategy: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for key, value in state.items():
                if params[key].shape != value.shape:
                    raise AdapterError(f"adapter tensor {key}: shape {tuple(value.shape)}, "
                                       f"model expects {tuple(params[key].shape)}")
                params[key].copy_(value)


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by ``cls.name``."""
    if cls.name in _STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    _STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    """A fresh instance of the strategy registered as ``name``."""
    _ensure_builtin_strategies()
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise AdapterError(f"unknown method {name!r}; registered: {', '.join(sorted(_STRATEGIES))}") from None


def list_strategies() -> list[str]:
    _ensure_builtin_strategies()
    return sorted(_STRATEGIES)


def freeze(module: nn.Module) -> None:
    """``requires_grad_(False)`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def count_trainable(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _ensure_builtin_strategies() -> None:
    import samliver.adapters  # noqa: F401  (the built-in strategies register on import)
