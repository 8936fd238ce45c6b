"""Saved adapters: ``adapter_model.safetensors`` (only the strategy's trainable tensors) and
``adapter_config.json`` (strategy, its config, base model name and checkpoint sha256,
samliver version). Loading refuses an adapter made for another base. A trained text projection
(``model.text_prompts``, `samliver.prompts.clip_text`) travels with the adapter: its tensors under
``text_prompts.`` and its record (text tower, class descriptions) as ``text_prompts`` in the config."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from samliver.atomic import write_bytes_atomic
from samliver.prompts.clip_text import restore_text_prompts, split_text_tensors, text_prompts_record

from .base import AdapterError, get_strategy

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def apply_strategy(model: nn.Module, method: str, config: dict | None = None) -> nn.Module:
    """Apply strategy ``method`` with ``config`` (a dict of its config fields) to ``model``;
    records ``model.adapter = {"strategy": ..., "config": ...}``."""
    strategy = get_strategy(method)
    cfg = strategy.config_class.from_dict(config)
    strategy.apply(model, cfg)
    model.adapter = {"strategy": method, "config": cfg.to_dict()}
    return model


def save_adapter(model: nn.Module, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``model``'s adapter (it must have been applied with `apply_strategy`) into ``folder``."""
    from safetensors.torch import save

    import samliver

    info = getattr(model, "adapter", None)
    if not info:
        raise AdapterError("model has no adapter applied; use apply_strategy(model, method, config) first")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = get_strategy(info["strategy"]).trainable_state_dict(model)
    config = {"strategy": info["strategy"], "config": info["config"], "base_model": model.spec.name,
              "base_checkpoint_sha256": model.checkpoint_sha256, "samliver_version": samliver.__version__,
              **(extra or {})}
    # A trained text projection (model.text_prompts) is saved beside the strategy's tensors, with its record.
    text_config, text_tensors = text_prompts_record(model)
    tensors = {**split_text_tensors(tensors)[0], **text_tensors}
    if text_config is not None:
        config["text_prompts"] = text_config
    write_bytes_atomic(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    write_bytes_atomic(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{path}: not found; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: unreadable adapter config ({exc})") from None
    for key in ("strategy", "config", "base_model"):
        if key not in config:
            raise AdapterError(f"{path}: missing key {key!r}")
    return config


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the adapter saved in ``folder`` to ``model`` (a bare base model), in place.

    Raises:
        AdapterError: the adapter was made for another base model or checkpoint, or its
            tensors do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_adapter_config(folder)
    if config["base_model"] != model.spec.name:
        raise AdapterError(f"{folder}: adapter was trained on {config['base_model']!r}, "
                           f"not on {model.spec.name!r}")
    want, have = config.get("base_checkpoint_sha256"), model.checkpoint_sha256
    if want != have:
        raise AdapterError(f"{folder}: adapter was trained on base checkpoint sha256 "
                           f"{want or 'none (random weights)'}, but the loaded base is {have or 'random weights'}")
    try:
        tensors = load_file(str(folder / WEIGHTS_NAME))
    except (OSError, SafetensorError) as exc:
        raise AdapterError(f"{folder / WEIGHTS_NAME}: unreadable adapter weights ({exc})") from None
    tensors, text_tensors = split_text_tensors(tensors)
    apply_strategy(model, config["strategy"], config["config"])
    get_strategy(config["strategy"]).load_trainable_state_dict(model, tensors)
    if "text_prompts" in config:
        restore_text_prompts(model, config["text_prompts"], text_tensors, where=str(folder))
    elif text_tensors:
        raise AdapterError(f"{folder}: holds text projection tensors but no text_prompts record")
    return model
