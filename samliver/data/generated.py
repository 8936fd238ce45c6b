"""Datasets made on the fly: ``load_dataset("phantom:PRESET?n=8&seed=0")``.

Spec grammar: ``phantom`` [``:PRESET``] [``?n=N&seed=S``]. Case ``i`` is
``make_phantom(seed + i, preset=PRESET)`` from `samliver.data.phantom`, named as it names
them (``phantom-liver-tumor-0003``); generated when accessed, never cached. Defaults: preset
``liver-tumor``, 8 cases, seed 0. ``n`` and ``seed`` may also come as keyword arguments to
`load_dataset`. Presets: `samliver.data.phantom.list_phantom_presets` (``liver-tumor``,
``organs``, ``tiny``, ...).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from samliver.data.case import Case
from samliver.data.layouts import STANDARD_LABELS, CaseRef
from samliver.errors import DatasetError, SamliverError

if TYPE_CHECKING:
    from samliver.data.datasets import Dataset

DEFAULT_PRESET = "liver-tumor"
DEFAULT_CASES = 8


def parse_phantom_spec(spec: str, n: int | None = None, seed: int | None = None) -> tuple[str, int | None, int]:
    """``(preset, n or None for the preset's default, seed)`` from a phantom spec and keyword overrides."""
    head, _, query = spec.partition("?")
    _, _, preset = head.partition(":")
    preset = preset.strip() or DEFAULT_PRESET
    options: dict[str, int] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in ("n", "seed"):
            raise DatasetError(f"{spec}: unknown phantom option {key!r}; use n= and seed=")
        try:
            options[key] = int(value)
        except ValueError:
            raise DatasetError(f"{spec}: phantom option {key}={value!r} is not an integer") from None
    for key, given in (("n", n), ("seed", seed)):
        if given is None:
            continue
        if key in options and options[key] != given:
            raise DatasetError(f"{spec}: {key}={options[key]} in the spec but {key}={given} as an argument")
        options[key] = int(given)
    if options.get("n", 1) < 1:
        raise DatasetError(f"{spec}: n must be at least 1; got {options['n']}")
    if options.get("seed", 0) < 0:
        raise DatasetError(f"{spec}: seed must be 0 or more; got {options['seed']}")
    return preset, options.get("n"), options.get("seed", 0)


def phantom_dataset(spec: str, n: int | None = None, seed: int | None = None) -> Dataset:
    """The `Dataset` a phantom spec describes (see the module docstring)."""
    from samliver.data.datasets import Dataset

    preset, count, first = parse_phantom_spec(spec, n, seed)
    module = _phantom_module(spec)
    listing = getattr(module, "list_phantom_presets", None)
    presets = list(listing()) if callable(listing) else None
    if presets is not None and preset not in presets:
        raise DatasetError(f"{spec}: unknown phantom preset {preset!r}; presets: {', '.join(sorted(presets))}")
    count = count or DEFAULT_CASES
    refs = [CaseRef(phantom_name(preset, s), seed=s) for s in range(first, first + count)]
    return Dataset(refs, _PhantomReader(preset), layout="phantom", root=None, has_liver=True,
                   label_map={0: 0, 1: 1, 2: 2}, label_names=dict(STANDARD_LABELS), title=f"phantom:{preset}")


def phantom_name(preset: str, seed: int) -> str:
    """A phantom case's name, as `make_phantom` names it: ``phantom-liver-tumor-0003``."""
    return f"phantom-{preset}-{seed:04d}"


class _PhantomReader:
    """Generates one phantom case (a picklable callable, for DataLoader workers)."""

    def __init__(self, preset: str) -> None:
        self.preset = preset

    def __call__(self, ref: CaseRef) -> Case:
        module = _phantom_module(f"phantom:{self.preset}")
        try:
            case = module.make_phantom(ref.seed, preset=self.preset)
        except SamliverError:
            raise
        except (ValueError, KeyError) as exc:
            raise DatasetError(f"phantom:{self.preset}, case {ref.name}: {exc}") from exc
        meta = {**case.meta, "layout": "phantom", "preset": self.preset, "seed": ref.seed}
        return dataclasses.replace(case, name=ref.name, meta=meta)


def _phantom_module(spec: str) -> ModuleType:
    try:
        module = importlib.import_module("samliver.data.phantom")
    except ImportError as exc:
        raise DatasetError(f"{spec}: phantom datasets need samliver.data.phantom ({exc})") from exc
    if not hasattr(module, "make_phantom"):
        raise DatasetError(f"{spec}: samliver.data.phantom has no make_phantom")
    return module
