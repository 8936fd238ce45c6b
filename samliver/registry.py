"""The model zoo: a table of `ModelSpec`s by name, filled by decorated builder registrations.

Everything model-specific lives in a spec (family, builder, checkpoint file, download
source, digest, input size, intensity convention), so no code outside the registry
branches on model names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from samliver.errors import UnknownModelError

if TYPE_CHECKING:
    from samliver.models.base import PromptableSegmenter

# Abdominal soft-tissue window W400/L40, in HU: the default for liver.
LIVER_WINDOW: tuple[float, float] = (-160.0, 240.0)


@dataclass(frozen=True)
class ModelSpec:
    """What samliver knows about one named model.

    Attributes:
        name: registry name, e.g. ``"sam_vit_b"``.
        family: ``"sam"`` (segment-anything ViT, incl. MedSAM) or ``"sam2"`` (Hiera via transformers).
        builder: ``builder(spec) -> PromptableSegmenter`` with random weights.
        checkpoint_file: file name looked up in the weights folders; ``None`` if there is none.
        url: where the checkpoint downloads from (``None``: not downloadable).
        md5_prefix: leading hex digits of the file's MD5, where the publisher encodes them in the name.
        sha256: the file's sha256, where it is published.
        input_size: side of the square model input in pixels (1024 for SAM-family models).
        intensity: ``"sam"``, ``"medsam"`` or ``"sam2"``: how windowed HU become model pixels.
        window: default CT window ``(lo, hi)`` in HU.
        description: one line for ``samliver weights list``.
        options: family-specific architecture options for the builder.
    """

    name: str
    family: str
    builder: Callable[["ModelSpec"], "PromptableSegmenter"]
    checkpoint_file: str | None = None
    url: str | None = None
    md5_prefix: str | None = None
    sha256: str | None = None
    input_size: int = 1024
    intensity: str = "sam"
    window: tuple[float, float] = LIVER_WINDOW
    description: str = ""
    options: dict = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the zoo; a name can be registered once."""
    if spec.name in _MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``; unknown names list the known ones."""
    _ensure_builtin_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}") from None


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _ensure_builtin_models()
    return sorted(_MODELS)


def _ensure_builtin_models() -> None:
    # The built-in families register themselves on import.
    import samliver.models  # noqa: F401
