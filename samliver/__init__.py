"""samliver: promptable foundation models (SAM, SAM 2, MedSAM) for liver and liver-tumour CT."""

from __future__ import annotations

__version__ = "0.1.0"

from samliver.errors import SamliverError
from samliver.inference import Prediction
from samliver.models import PromptableSegmenter, load_model
from samliver.predictor import Predictor
from samliver.registry import ModelSpec, list_models


def __getattr__(name: str):
    # CT I/O imports SimpleITK/nibabel lazily; model code runs where they are absent.
    if name in ("load_ct", "save_mask", "CTVolume", "load_label"):
        import samliver.io as io

        return getattr(io, name)
    raise AttributeError(f"module 'samliver' has no attribute {name!r}")


__all__ = ["ModelSpec", "Prediction", "Predictor", "PromptableSegmenter", "SamliverError", "__version__",
           "list_models", "load_model", "load_ct", "load_label", "save_mask", "CTVolume"]
