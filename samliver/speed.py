"""Inference speed settings: mixed precision and ``torch.compile`` for the image encoder, CPU threads.

- ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``. The image encoder (nearly all of
  the cost) runs under ``torch.autocast``; its embeddings are cast back to float32, so the prompt
  encoder, mask decoder and upsampling run as in fp32. On a GPU, bf16 masks match fp32 ones to a
  per-object Dice of 0.99 or better (``bench/gpu_check.sh`` measures it); on a CPU without bf16
  units it is slower, not faster.
- `compile_encoder`: compiles the image encoder in place (``nn.Module.compile``: parameter names
  and state-dict keys stay the same). The first call per input shape pays the compilation.
- `set_threads`: torch's intra-op threads to the CPUs this process may use (a container's CPU
  set, not the host's cores); torch's own default counts the host's physical cores.

The fast attention path (`samliver.models.fast_attention`) is on by default and needs none of these.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from samliver.errors import SamliverError

__all__ = ["PRECISIONS", "PrecisionError", "compile_encoder", "encoder_autocast", "set_threads"]

#: precision name -> autocast dtype (None: plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(SamliverError, ValueError):
    """An unknown precision name, or one the device cannot run."""


def check_precision(precision: str | None) -> str:
    """``precision`` (None means fp32) as a known name; raises PrecisionError naming the choices."""
    name = "fp32" if precision is None else str(precision)
    if name not in PRECISIONS:
        raise PrecisionError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)}")
    return name


@contextlib.contextmanager
def encoder_autocast(device: torch.device | str, precision: str | None) -> Iterator[None]:
    """``torch.autocast`` for the encoder at ``precision`` on ``device``'s type; nothing for fp32."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        yield
        return
    device_type = torch.device(device).type
    if device_type == "cpu" and dtype == torch.float16:
        raise PrecisionError("precision 'fp16' runs on GPUs only; use 'bf16' or 'fp32' on the CPU")
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def compile_encoder(model: nn.Module, **options) -> nn.Module:
    """Compile ``model.image_encoder`` in place with ``torch.compile(**options)``; returns ``model``.

    Keys of ``state_dict`` are unchanged (``nn.Module.compile`` compiles the call, not a wrapper).
    """
    model.image_encoder.compile(**options)
    return model


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity set, e.g. a container's ``--cpus`` set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: every usable CPU); returns the number set."""
    count = usable_cpus() if threads is None else int(threads)
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(count)
    return count
