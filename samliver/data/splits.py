"""Train / validation / test splits by case (never by slice): made from fractions, or read from a file.

A split is ``{"train": [names], "val": [names], "test": [names]}``; files hold the same as JSON or
YAML. nnU-Net's ``splits_final.json`` (a list of ``{"train", "val"}`` folds) reads with ``fold=``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from samliver.data.layouts import natural_key
from samliver.errors import DatasetError

if TYPE_CHECKING:
    from samliver.data.datasets import Dataset

SPLIT_KEYS = ("train", "val", "test")


def split_cases(names: Sequence[str], fractions: Sequence[float] | Mapping[str, float] = (0.7, 0.15, 0.15),
                seed: int = 0) -> dict[str, list[str]]:
    """Assign whole cases to train/val/test, deterministically from ``seed``.

    Args:
        names: case names (unique).
        fractions: ``(train, val, test)`` or ``(train, val)`` fractions summing to 1, or a
            mapping with keys from ``train``, ``val``, ``test``.
        seed: different seeds give different splits; the same seed always gives the same one.

    Returns:
        One list per split key, each in natural name order. Counts follow the fractions by
        largest remainder; a part with a positive fraction gets at least one case when there are
        enough cases. Each case's place depends only on its name and the seed (a keyed hash), so
        the split is the same whatever order ``names`` come in.
    """
    parts = _fractions(fractions)
    names = list(names)
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:
        raise DatasetError(f"split: case names listed twice: {', '.join(repeated)}")
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}\0{n}".encode()).digest())
    counts = _allocate(len(ranked), [f for _, f in parts])
    out: dict[str, list[str]] = {}
    start = 0
    for (key, _), count in zip(parts, counts):
        out[key] = sorted(ranked[start:start + count], key=natural_key)
        start += count
    return out


def load_split(path: str | os.PathLike[str], names: Sequence[str] | None = None,
               fold: int | None = None) -> dict[str, list[str]]:
    """Read a split file (``.json``, ``.yaml``, ``.yml``) and check it.

    Args:
        path: ``{"train": [...], "val": [...], "test": [...]}`` (any subset of those keys), or a
            list of such folds (nnU-Net ``splits_final.json``).
        names: the dataset's case names; names the split lists but the dataset lacks are refused.
        fold: which fold of a list of folds (required when there is more than one).

    Raises `DatasetError` naming the file for unreadable files, unknown keys or names, and names
    in more than one part.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the split file ({exc})") from exc
    data = _parse(path, text)
    if isinstance(data, list):
        if fold is None and len(data) != 1:
            raise DatasetError(f"{path}: {len(data)} folds; pass fold= 0..{len(data) - 1}")
        index = 0 if fold is None else fold
        if not 0 <= index < len(data):
            raise DatasetError(f"{path}: no fold {index}; the file has {len(data)}")
        data = data[index]
    elif fold not in (None, 0):
        raise DatasetError(f"{path}: one split, not a list of folds; fold={fold} does not apply")
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: a split maps train/val/test to lists of case names")
    split: dict[str, list[str]] = {}
    for key, value in data.items():
        if key not in SPLIT_KEYS:
            raise DatasetError(f"{path}: unknown split {key!r}; use {', '.join(SPLIT_KEYS)}")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DatasetError(f"{path}: split {key!r} must be a list of case names")
        split[key] = list(value)
    check_split(split, names, where=str(path))
    return split


def check_split(split: Mapping[str, Sequence[str]], names: Sequence[str] | None = None, where: str = "split") -> None:
    """Refuse a name listed twice, in two parts, or (given ``names``) not in the dataset."""
    owner: dict[str, str] = {}
    for key, members in split.items():
        for name in members:
            if name in owner:
                both = f"in both {owner[name]!r} and {key!r}" if owner[name] != key else f"twice in {key!r}"
                raise DatasetError(f"{where}: case {name} is listed {both}")
            owner[name] = key
    if names is not None:
        known = set(names)
        unknown = [n for n in owner if n not in known]
        if unknown:
            raise DatasetError(f"{where}: cases not in the dataset: {', '.join(unknown)}")


def apply_split(dataset: Dataset, split: Mapping[str, Sequence[str]]) -> dict[str, Dataset]:
    """``{"train": Dataset, ...}``: the dataset's `Dataset.subset` for each part of a checked split."""
    check_split(split, dataset.names, where=f"split of {dataset.root or dataset.title}")
    return {key: dataset.subset(list(members)) for key, members in split.items()}


def save_split(split: Mapping[str, Sequence[str]], path: str | os.PathLike[str]) -> Path:
    """Write ``split`` as JSON (``.json``) or YAML (``.yaml``/``.yml``), atomically."""
    path = Path(path)
    check_split(split, where=str(path))
    data = {key: list(split[key]) for key in split}
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise DatasetError(f"{path}: split files end in .json, .yaml or .yml")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot write the split ({exc.strerror or exc})") from exc
    return path


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DatasetError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    raise DatasetError(f"{path}: split files end in .json, .yaml or .yml")


def _fractions(fractions: Sequence[float] | Mapping[str, float]) -> list[tuple[str, float]]:
    if isinstance(fractions, Mapping):
        unknown = [k for k in fractions if k not in SPLIT_KEYS]
        if unknown:
            raise DatasetError(f"split fractions: unknown parts {unknown}; use {', '.join(SPLIT_KEYS)}")
        parts = [(k, float(fractions[k])) for k in SPLIT_KEYS if k in fractions]
    else:
        values = [float(f) for f in fractions]
        if len(values) not in (2, 3):
            raise DatasetError(f"split fractions: give (train, val) or (train, val, test); got {values}")
        parts = list(zip(SPLIT_KEYS, values))
    if any(not math.isfinite(f) or f < 0 for _, f in parts):
        raise DatasetError(f"split fractions must be finite and non-negative; got {dict(parts)}")
    if abs(sum(f for _, f in parts) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must sum to 1; got {dict(parts)} (sum {sum(f for _, f in parts):.6g})")
    return parts


def _allocate(total: int, fractions: list[float]) -> list[int]:
    """Largest-remainder counts summing to ``total``; positive fractions get >= 1 where possible."""
    exact = [f * total for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    if total >= sum(f > 0 for f in fractions):
        for i, f in enumerate(fractions):
            if f > 0 and counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts
