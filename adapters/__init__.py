"""Adaptation strategies (installed as ``samliver.adapters``): each a config dataclass plus
``apply``, registered by name. Adding one = one module here + its ``@register_strategy``."""

from .base import (
    AdapterError,
    Strategy,
    StrategyConfig,
    count_trainable,
    freeze,
    get_strategy,
    list_strategies,
    register_strategy,
)
from .saving import CONFIG_NAME, WEIGHTS_NAME, apply_strategy, load_adapter, read_adapter_config, save_adapter

__all__ = ["AdapterError", "CONFIG_NAME", "Strategy", "StrategyConfig", "WEIGHTS_NAME", "apply_strategy",
           "count_trainable", "freeze", "get_strategy", "list_strategies", "load_adapter", "read_adapter_config",
           "register_strategy", "save_adapter"]
from . import depth3d  # noqa: F401  (registration)
from . import lora  # noqa: F401  (registration)
from . import full, decoder  # noqa: F401  (registration)
