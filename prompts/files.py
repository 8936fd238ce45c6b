"""The JSON prompts file of ``samliver segment --prompts-file`` (schema in DESIGN.md)::

    {"objects": [{"slice": 42, "box": [x0, y0, x1, y1], "points": [[x, y]], "point_labels": [1], "label": 2}]}

Coordinates are pixels of the canonical axial slice; each object needs a box or points.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from samliver.errors import PromptError

from .types import Prompts

_KEYS = {"slice", "box", "points", "point_labels", "label"}


def group_objects(objects: list[dict[str, Any]], where: str = "prompts") -> dict[int, list[Prompts]]:
    """Objects (dicts with the file's keys) -> slice -> `Prompts` batches.

    Objects of one slice that share a prompt layout (box or not, number of points) form one
    batch, decoded together.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for i, obj in enumerate(objects):
        name = f"{where}: objects[{i}]"
        if not isinstance(obj, dict):
            raise PromptError(f"{name}: expected an object, got {type(obj).__name__}")
        unknown = set(obj) - _KEYS
        if unknown:
            raise PromptError(f"{name}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
        z = obj.get("slice")
        if not isinstance(z, int) or isinstance(z, bool) or z < 0:
            raise PromptError(f"{name}.slice: expected a slice index >= 0, got {z!r}")
        if obj.get("box") is None and not obj.get("points"):
            raise PromptError(f"{name}: needs a box or points")
        n_points = len(obj.get("points") or [])
        groups[(z, obj.get("box") is not None, n_points)].append(obj)
    out: dict[int, list[Prompts]] = defaultdict(list)
    for (z, has_box, n_points), objs in sorted(groups.items()):
        try:
            out[z].append(Prompts(
                boxes=np.array([o["box"] for o in objs], np.float32) if has_box else None,
                points=np.array([o["points"] for o in objs], np.float32) if n_points else None,
                point_labels=np.array([o.get("point_labels", [1] * n_points) for o in objs]) if n_points else None,
                labels=np.array([o.get("label", 1) for o in objs])))
        except (PromptError, ValueError, TypeError) as exc:
            raise PromptError(f"{where}: slice {z}: {exc}") from None
    return dict(out)


def read_prompts_file(path: str | Path) -> dict[int, list[Prompts]]:
    """Read a prompts JSON file; errors name the file and the offending object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"{path}: prompts file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptError(f"{path}: not a readable JSON prompts file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list) or not data["objects"]:
        raise PromptError(f'{path}: expected {{"objects": [...]}} with at least one object')
    return group_objects(data["objects"], where=str(path))
