"""Datasets described by a ``dataset.json``: Medical Segmentation Decathlon and nnU-Net v2 raw.

MSD (and nnU-Net v1)::

    {"labels": {"0": "background", "1": "liver", "2": "cancer"},
     "modality": {"0": "CT"},
     "training": [{"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}]}

nnU-Net v2 raw::

    {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
     "numTraining": 131, "file_ending": ".nii.gz"}

with ``imagesTr/CASE_0000.nii.gz`` and ``labelsTr/CASE.nii.gz`` (or an explicit ``"dataset"``
table ``{CASE: {"images": [...], "label": ...}}``). Every path a dataset.json names must stay
inside the dataset folder: absolute paths, ``..`` and symlinks that resolve outside are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from samliver.data.layouts import CaseRef, DatasetIndex, nifti_stem, pair_problem
from samliver.errors import DatasetError


def read_dataset_json(root: Path) -> dict[str, Any]:
    """The parsed ``root/dataset.json`` (a JSON object), or `DatasetError` naming the file."""
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read dataset.json ({exc})") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: dataset.json must hold a JSON object, not {type(data).__name__}")
    return data


def dataset_json_layout(root: Path) -> str:
    """``"msd"`` when dataset.json lists ``"training"`` cases, ``"nnunet"`` when it has ``"channel_names"``."""
    data = read_dataset_json(root)
    if isinstance(data.get("training"), list):
        return "msd"
    if "channel_names" in data:
        return "nnunet"
    raise DatasetError(
        f"{root / 'dataset.json'}: neither MSD (a \"training\" list) nor nnU-Net v2 (\"channel_names\", "
        "\"file_ending\")"
    )


def scan_dataset_json(root: Path, layout: str) -> DatasetIndex:
    """List the training cases of an MSD (``layout="msd"``) or nnU-Net v2 (``"nnunet"``) folder."""
    data = read_dataset_json(root)
    title = str(data.get("name") or root.name)
    if layout == "msd":
        return DatasetIndex(root, "msd", _msd_cases(root, data), _msd_labels(root, data), title)
    return DatasetIndex(root, "nnunet", _nnunet_cases(root, data), _nnunet_labels(root, data), title)


def resolve_entry(root: Path, entry: Any, what: str) -> Path:
    """``root / entry`` for a relative path that stays inside ``root``; else `DatasetError` naming ``what``.

    Refused: non-strings, absolute paths (POSIX or Windows), ``..`` components, and paths
    that resolve (through symlinks) outside ``root``.
    """
    where = f"{root / 'dataset.json'}: {what}"
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetError(f"{where} must be a relative path string; got {entry!r}")
    posix, windows = PurePosixPath(entry), PureWindowsPath(entry)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or entry.startswith(("/", "\\")):
        raise DatasetError(f"{where} {entry!r} is an absolute path; entries must lie inside the dataset folder")
    if ".." in posix.parts or ".." in windows.parts:
        raise DatasetError(f"{where} {entry!r} points outside the dataset folder ('..')")
    path = root / posix
    inside = root.resolve()
    resolved = path.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise DatasetError(f"{where} {entry!r} resolves outside the dataset folder (to {resolved})")
    return path


def _msd_labels(root: Path, data: dict[str, Any]) -> dict[int, str]:
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{root / 'dataset.json'}: needs \"labels\" mapping values to names, e.g. {{\"0\": \"background\"}}")
    labels: dict[int, str] = {}
    for key, name in raw.items():
        value = _label_value(root, key, name)
        if not isinstance(name, str):
            raise DatasetError(f"{root / 'dataset.json'}: label {key!r} must have a name string; got {name!r}")
        labels[value] = name
    return labels


def _msd_cases(root: Path, data: dict[str, Any]) -> list[CaseRef]:
    modality = data.get("modality")
    if isinstance(modality, dict) and len(modality) > 1:
        raise DatasetError(f"{root / 'dataset.json'}: {len(modality)} image channels {modality}; samliver reads single-channel CT")
    cases = []
    for i, entry in enumerate(data["training"]):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"{root / 'dataset.json'}: training[{i}] needs \"image\" and \"label\"; got {entry!r}")
        image = resolve_entry(root, entry["image"], f"training[{i}].image")
        label = resolve_entry(root, entry["label"], f"training[{i}].label")
        name = nifti_stem(image) or image.name
        cases.append(CaseRef(name, image, label, pair_problem(root, name, image, label)))
    return cases


def _nnunet_labels(root: Path, data: dict[str, Any]) -> dict[int, str]:
    """Raw value → name; for region-based labels (``"liver": [1, 2]``) a value takes the smallest region's name."""
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{root / 'dataset.json'}: needs \"labels\" mapping names to values, e.g. {{\"background\": 0}}")
    regions: list[tuple[int, str, list[int]]] = []
    for name, values in raw.items():
        members = values if isinstance(values, list) else [values]
        if not members:
            raise DatasetError(f"{root / 'dataset.json'}: label {name!r} has no values")
        regions.append((len(members), name, [_label_value(root, v, name) for v in members]))
    labels: dict[int, str] = {}
    for _, name, members in sorted(regions, key=lambda r: -r[0]):  # smaller regions overwrite larger
        for value in members:
            labels[value] = name
    return labels


def _nnunet_cases(root: Path, data: dict[str, Any]) -> list[CaseRef]:
    where = root / "dataset.json"
    ending = data.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in (".nii", ".nii.gz"):
        raise DatasetError(f"{where}: file_ending {ending!r} is not supported; samliver reads .nii and .nii.gz")
    channel = _ct_channel(where, data.get("channel_names"))
    if "dataset" in data:
        return _nnunet_listed(root, data["dataset"], channel)
    pattern = re.compile(rf"^(?P<case>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$", re.IGNORECASE)
    images: dict[str, Path] = {}
    folder = root / "imagesTr"
    if not folder.is_dir():
        raise DatasetError(f"{root}: nnU-Net dataset without an imagesTr/ folder")
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match and not path.name.startswith(".") and int(match["channel"]) == channel:
            images[match["case"]] = path
    labels: dict[str, Path] = {}
    if (root / "labelsTr").is_dir():
        for path in sorted((root / "labelsTr").iterdir()):
            if path.name.lower().endswith(ending.lower()) and not path.name.startswith("."):
                labels[path.name[: -len(ending)]] = path
    cases = []
    for name in sorted(set(images) | set(labels)):
        image = images.get(name, folder / f"{name}_{channel:04d}{ending}")
        label = labels.get(name, root / "labelsTr" / f"{name}{ending}")
        cases.append(CaseRef(name, image, label, pair_problem(root, name, image, label)))
    return cases


def _nnunet_listed(root: Path, table: Any, channel: int) -> list[CaseRef]:
    if not isinstance(table, dict):
        raise DatasetError(f"{root / 'dataset.json'}: \"dataset\" must map case names to {{\"images\": [...], \"label\": ...}}")
    cases = []
    for name, entry in table.items():
        images = entry.get("images") if isinstance(entry, dict) else None
        if not isinstance(images, list) or len(images) <= channel or "label" not in entry:
            raise DatasetError(f"{root / 'dataset.json'}: dataset[{name!r}] needs \"images\" (channel {channel}) and \"label\"")
        image = resolve_entry(root, images[channel], f"dataset[{name!r}].images[{channel}]")
        label = resolve_entry(root, entry["label"], f"dataset[{name!r}].label")
        cases.append(CaseRef(str(name), image, label, pair_problem(root, str(name), image, label)))
    return cases


def _ct_channel(where: Path, channels: Any) -> int:
    """The CT channel's index: the only channel, or the one named CT."""
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f"{where}: needs \"channel_names\", e.g. {{\"0\": \"CT\"}}")
    if len(channels) == 1:
        key = next(iter(channels))
    else:
        ct = [k for k, v in channels.items() if str(v).strip().lower() == "ct"]
        if len(ct) != 1:
            raise DatasetError(f"{where}: {len(channels)} channels {channels}; samliver reads one CT channel")
        key = ct[0]
    try:
        return int(key)
    except ValueError:
        raise DatasetError(f"{where}: channel key {key!r} is not an integer") from None


def _label_value(root: Path, value: Any, name: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if isinstance(value, bool) or number < 0 or number > 255 or str(number) != str(value).strip():
        raise DatasetError(f"{root / 'dataset.json'}: label {name!r} has value {value!r}; values are integers 0..255")
    return number
