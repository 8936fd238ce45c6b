"""Prompt types and generators (installed as ``samliver.prompts``).

A volume's prompts are a ``dict[int, Prompts]`` mapping slice index to that slice's prompts.
"""

from .clip_text import TextProjection, TextPrompter, TextTowerSpec, text_tokens
from .files import group_objects, read_prompts_file
from .from_mask import boxes_from_mask, points_from_mask
from .types import Prompts
from .generators import BoxGenerator, register_default_generator
from .recist import RecistMarks, from_recist, recist_from_mask, recist_prompts

__all__ = ["Prompts", "TextProjection", "TextPrompter", "TextTowerSpec", "boxes_from_mask", "group_objects",
           "points_from_mask", "read_prompts_file", "text_tokens"]
__all__ += ["BoxGenerator", "RecistMarks", "from_recist", "recist_from_mask", "recist_prompts",
            "register_default_generator"]
__all__ += ["UNetBoxGenerator", "boxes_from_probabilities", "bundled_box_generator", "load_box_generator"]

_LAZY = {"UNetBoxGenerator": "unet_boxes", "bundled_box_generator": "unet_boxes", "load_box_generator": "unet_boxes",
         "boxes_from_probabilities": "component_boxes"}


def __getattr__(name: str):
    # The U-Net box generator imports MONAI; `import samliver.prompts` stays light without it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'samliver.prompts' has no attribute {name!r}")
