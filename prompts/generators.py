"""Box generators: automatic prompts for a whole CT, and each model's default one.

A box generator is any callable ``(hu, spacing) -> {slice: Prompts}`` (`BoxGenerator`): e.g.
the U-Net of `samliver.prompts.unet_boxes`. `Predictor.segment_auto` refines its prompts with
the model. Models name a default generator by registration (`register_default_generator`),
so ``segment_auto(ct)`` with no generator works for them; nothing branches on model names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from samliver.errors import SamliverError

from .types import Prompts


class BoxGeneratorError(SamliverError, ValueError):
    """A box generator is unavailable or returned something other than ``{slice: Prompts}``."""


@runtime_checkable
class BoxGenerator(Protocol):
    """Automatic prompts for a CT.

    ``generator(hu, spacing)``: ``hu`` ``(Z, Y, X)`` float32 HU in the canonical orientation,
    ``spacing`` ``(z, y, x)`` mm → ``{slice index: Prompts}`` with boxes xyxy in that slice's
    pixels and labels 1 (liver) / 2 (tumour). A slice with nothing found has no entry (or an
    empty `Prompts`).
    """

    def __call__(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> dict[int, Prompts]: ...


_DEFAULTS: dict[str, tuple[Callable[[], BoxGenerator], str]] = {}


def register_default_generator(model_name: str, factory: Callable[[], BoxGenerator], description: str = "") -> None:
    """Make ``factory()`` the box generator `default_box_generator(model_name)` builds (later
    registrations replace earlier ones). ``description`` names it in messages."""
    _DEFAULTS[model_name] = (factory, description or getattr(factory, "__name__", "a box generator"))


def has_default_generator(model_name: str) -> bool:
    return model_name in _DEFAULTS


def default_box_generator(model_name: str) -> BoxGenerator | None:
    """The default generator of model ``model_name``, built now; None if it has none.

    Raises:
        BoxGeneratorError: it has one, but its code is not installed (an ImportError); errors of
            the factory itself (e.g. `WeightsNotFoundError` for missing weights) pass through.
    """
    if model_name not in _DEFAULTS:
        return None
    factory, description = _DEFAULTS[model_name]
    try:
        return factory()
    except ImportError as exc:
        raise BoxGeneratorError(f"{model_name}: its default box generator ({description}) is unavailable: "
                                f"{exc}") from None


def check_generated(prompts, depth: int, where: str = "box generator") -> dict[int, Prompts]:
    """Validate a generator's output for a volume of ``depth`` slices; returns ``{z: Prompts}``
    without the empty entries.

    Raises:
        BoxGeneratorError: not a mapping, a slice index outside ``0..depth-1``, a value that is
            not `Prompts`, or a label other than 1 (liver) and 2 (tumour).
    """
    if not hasattr(prompts, "items"):
        raise BoxGeneratorError(f"{where}: returned {type(prompts).__name__}, expected {{slice: Prompts}}")
    out: dict[int, Prompts] = {}
    for z, value in prompts.items():
        if not (isinstance(z, (int, np.integer)) and 0 <= z < depth):
            raise BoxGeneratorError(f"{where}: slice {z!r} outside the volume's {depth} slices")
        if not isinstance(value, Prompts):
            raise BoxGeneratorError(f"{where}: slice {z} holds {type(value).__name__}, expected Prompts")
        bad = sorted(set(value.labels.tolist()) - {1, 2})
        if bad:
            raise BoxGeneratorError(f"{where}: slice {z} has label {bad[0]}; automatic segmentation knows "
                                    f"1 (liver) and 2 (tumour)")
        if len(value):
            out[int(z)] = value
    return out


def _bundled_unet() -> BoxGenerator:
    from .unet_boxes import bundled_box_generator

    return bundled_box_generator()


_DEFAULT_ADAPTERS: dict[str, Callable[[], Path]] = {}


def register_default_adapter(model_name: str, folder: Callable[[], Path]) -> None:
    """Make ``folder()`` (a saved adapter) the adapter ``samliver segment --auto`` applies to
    ``model_name`` when no ``--adapter`` is given."""
    _DEFAULT_ADAPTERS[model_name] = folder


def default_adapter(model_name: str) -> Path | None:
    """The saved adapter folder automatic segmentation uses with ``model_name`` by default, or None."""
    return _DEFAULT_ADAPTERS[model_name]() if model_name in _DEFAULT_ADAPTERS else None


def _bundled_liver_tumour_adapter() -> Path:
    from samliver.weights_store import bundled_dir

    return bundled_dir() / "samliver_tiny_liver_tumor"


# The bundled demo model's defaults: the U-Net shipped beside it, trained on the same phantoms, and the
# main job's LoRA adapter (weights/samliver_tiny_liver_tumor, `train_adapter.py --method lora`): the base
# model was pretrained on organ phantoms without tumours, so its tumour masks spill over the liver.
register_default_generator("samliver_tiny", _bundled_unet, "the bundled phantom U-Net, samliver.prompts.unet_boxes")
register_default_adapter("samliver_tiny", _bundled_liver_tumour_adapter)
