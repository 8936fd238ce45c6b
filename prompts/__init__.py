"""Prompt types and generators (installed as ``samliver.prompts``).

A volume's prompts are a ``dict[int, Prompts]`` mapping slice index to that slice's prompts.
"""

from .files import group_objects, read_prompts_file
from .from_mask import boxes_from_mask, points_from_mask
from .types import Prompts

__all__ = ["Prompts", "boxes_from_mask", "group_objects", "points_from_mask", "read_prompts_file"]
