"""Reading checkpoint files safely and loading them strictly.

Only tensors are ever unpickled (``torch.load(weights_only=True)``); safetensors is read
with ``safetensors.torch``. A checkpoint for another architecture fails with the first
mismatching keys named, so a user sees at once which model the file belongs to.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from samliver.errors import CheckpointError

# Wrapper formats we unwrap: Meta's SAM 2 ``{"model": ...}``, Lightning-style ``{"state_dict": ...}``.
_NESTED_KEYS = ("model", "state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` (weights-only pickle) or ``.safetensors`` file.

    Raises:
        CheckpointError: missing, truncated or not a weights file, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    from safetensors import SafetensorError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load; the file holds more than tensors "
                              f"(weights_only=True): {first}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or another format?): {first}") from None
    for key in _NESTED_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(data).__name__}")
    return data


def load_state_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], model_name: str) -> None:
    """``module.load_state_dict(state_dict)`` that reports a wrong architecture in one line.

    Raises:
        CheckpointError: naming the first missing, unexpected and shape-mismatched keys.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{what}: {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint does not fit {model_name} (another architecture?); " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)
