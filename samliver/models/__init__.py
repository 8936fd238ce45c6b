"""Model wrappers behind the one `PromptableSegmenter` interface; importing registers the zoo."""

from . import conventions, zoo  # noqa: F401  (registration side effects)
from . import sam2_zoo  # noqa: F401  (SAM 2.1 / MedSAM2 registrations)
from .base import DecoderOutput, ImageEmbedding, PromptableSegmenter
from .loading import load_model

__all__ = ["DecoderOutput", "ImageEmbedding", "PromptableSegmenter", "load_model"]
