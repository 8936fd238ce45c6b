"""YAML presets (installed as ``samliver.configs``): one file per method, model or data preset.

`samliver.configs.path(kind, name)` finds ``configs/<kind>/<name>.yaml``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path(kind: str, name: str) -> Path:
    """The preset file ``<kind>/<name>.yaml``; unknown names list the known ones."""
    found = ROOT / kind / f"{name}.yaml"
    if not found.is_file():
        known = sorted(p.stem for p in (ROOT / kind).glob("*.yaml"))
        raise ValueError(f"unknown {kind} preset {name!r}; known: {', '.join(known) or 'none'}")
    return found
