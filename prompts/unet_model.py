"""The box U-Net's network, its input, and its files.

The network is MONAI's 2D ``UNet``: input ``C = 2 * context + 1`` adjacent axial slices as channels (2.5D;
``context = 0`` is plain 2D; at the volume's ends the edge slice repeats, `samliver.inference.stack_indices`),
each CT-windowed to ``[0, 1]`` and resized to ``input_size x input_size`` pixels; output 3 class logits
(background, liver, tumour) for the centre slice, softmax over classes.

The input is made exactly as the training cache makes its slices (`samliver.data.cache`: in-plane
``scipy.ndimage.zoom`` order 1 with ``grid_mode``, then `samliver.data.intensity.window_to_uint8`, then
``/ 255``), so a cache prepared with ``size=input_size`` and the same window holds the network's input.

Files: ``NAME.safetensors`` (the state dict; its metadata repeats the input size, channels, window and
classes) and ``NAME.json`` (architecture, input, classes, the generator's box parameters, training
record, versions, and the weights file's sha256). `write_files` writes the weights first, then the JSON,
each atomically; `read_files` checks that the two belong together (the sha256, where the JSON has one:
files written before it was recorded are checked by input size and tensor shapes only).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from samliver.atomic import write_bytes_atomic
from samliver.errors import CheckpointError
from samliver.registry import LIVER_WINDOW

CLASSES = ("background", "liver", "tumor")
FORMAT = "samliver-box-unet"
FORMAT_VERSION = 1
DEFAULT_NAME = "box_unet"
_META_KEY = "samliver_box_unet"


@dataclasses.dataclass(frozen=True)
class BoxUNetSpec:
    """Architecture and input of a box U-Net.

    Attributes:
        input_size: slices are resized to ``input_size x input_size`` pixels (divisible by the product of ``strides``).
        context: adjacent slices on each side given as extra channels (``in_channels = 2 * context + 1``).
        window: CT window ``(lo, hi)`` in HU mapped to ``[0, 1]``.
        channels, strides, num_res_units, norm, dropout: MONAI ``UNet`` arguments (``norm``: ``instance`` or ``batch``).
    """

    input_size: int = 128
    context: int = 1
    window: tuple[float, float] = LIVER_WINDOW
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    norm: str = "instance"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "window", tuple(float(w) for w in self.window))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        lo, hi = self.window if len(self.window) == 2 else (0.0, 0.0)
        if not (len(self.window) == 2 and np.isfinite([lo, hi]).all() and hi > lo):
            raise ValueError(f"window: need (lo, hi) HU with lo < hi, got {self.window}")
        if int(self.context) < 0:
            raise ValueError(f"context: need 0 or more adjacent slices, got {self.context}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"channels/strides: need len(strides) == len(channels) - 1 >= 1, got "
                             f"{list(self.channels)} and {list(self.strides)}")
        if self.norm not in ("instance", "batch"):
            raise ValueError(f"norm: 'instance' or 'batch', got {self.norm!r}")
        factor = int(np.prod(self.strides))
        if int(self.input_size) < factor or int(self.input_size) % factor:
            raise ValueError(f"input_size {self.input_size} must be a multiple of {factor} (the product of strides)")

    @property
    def in_channels(self) -> int:
        return 2 * int(self.context) + 1

    def to_json(self) -> dict[str, Any]:
        return {"input_size": int(self.input_size), "context": int(self.context), "in_channels": self.in_channels,
                "window": list(self.window), "channels": list(self.channels), "strides": list(self.strides),
                "num_res_units": int(self.num_res_units), "norm": self.norm, "dropout": float(self.dropout)}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "BoxUNetSpec":
        """A spec from `to_json`'s dict (``in_channels`` is derived, so it is ignored here)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields - {"in_channels"})
        if unknown:
            raise ValueError(f"unknown network key {unknown[0]!r}; known: {', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in values.items() if k in fields})


def build_unet(spec: BoxUNetSpec) -> nn.Module:
    """MONAI ``UNet(spatial_dims=2, in_channels=C, out_channels=3, ...)`` for ``spec`` (random weights)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=spec.in_channels, out_channels=len(CLASSES), channels=spec.channels,
                strides=spec.strides, num_res_units=spec.num_res_units, norm=spec.norm, dropout=spec.dropout)


def grey_slices(hu: np.ndarray, spec: BoxUNetSpec, chunk: int = 32) -> np.ndarray:
    """HU ``(Z, Y, X)`` -> windowed grey values ``(Z, S, S)`` uint8 at the network's input size ``S``.

    Resized as `samliver.data.cache.resample_inplane` resizes (``ndimage.zoom`` order 1, ``mode="nearest"``,
    ``grid_mode=True``, zoom 1 along z so slices never mix), then windowed by `window_to_uint8`; done
    ``chunk`` slices at a time to bound the float32 copy of a large CT.
    """
    from samliver.data.intensity import window_to_uint8

    z, h, w = hu.shape
    size = int(spec.input_size)
    out = np.empty((z, size, size), np.uint8)
    for start in range(0, z, chunk):
        part = np.asarray(hu[start:start + chunk], np.float32)
        if (h, w) != (size, size):
            part = ndimage.zoom(part, (1.0, size / h, size / w), order=1, mode="nearest", grid_mode=True)
        out[start:start + chunk] = window_to_uint8(part, spec.window)
    return out


def stacks(grey: np.ndarray, indices: Sequence[int], context: int) -> torch.Tensor:
    """Network input ``(B, 2 * context + 1, S, S)`` float32 in ``[0, 1]`` for slices ``indices`` of
    ``grey`` ``(Z, S, S)`` uint8 (edge slices repeated at the volume's ends)."""
    from samliver.inference import stack_indices

    depth, n = 2 * int(context) + 1, grey.shape[0]
    picks = np.stack([stack_indices(int(i), n, depth) for i in indices])
    return torch.from_numpy(grey[picks].astype(np.float32) / np.float32(255.0))


# ---------------------------------------------------------------- files


def file_pair(path: str | Path) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for either file of the pair (a path ending in ``.safetensors`` or
    ``.json``); any other path is a folder holding ``box_unet.safetensors`` + ``box_unet.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path / DEFAULT_NAME
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def write_files(net: nn.Module, spec: BoxUNetSpec, path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``NAME.safetensors`` and then ``NAME.json`` (each atomically; the JSON names the weights' sha256, so
    a pair left mixed by a failed save is refused on reading) for ``path`` (see `file_pair`); ``record`` adds
    ``boxes``, ``training`` and the like to the JSON. Returns the safetensors path."""
    import hashlib

    import monai
    from safetensors.torch import save

    import samliver

    weights, config = file_pair(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {"input_size": spec.input_size, "in_channels": spec.in_channels, "context": spec.context,
            "window": list(spec.window), "classes": list(CLASSES)}
    blob = save(state, metadata={"format": "pt", _META_KEY: json.dumps(meta)})
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": "monai.networks.nets.UNet",
            "network": spec.to_json(), "classes": list(CLASSES),
            "input": "2*context+1 adjacent axial slices, CT window -> [0, 1], resized to input_size^2 "
                     "(scipy.ndimage.zoom order 1, grid_mode)",
            **record, "samliver_version": samliver.__version__, "monai_version": monai.__version__,
            "weights_sha256": hashlib.sha256(blob).hexdigest()}
    write_bytes_atomic(weights, blob)
    write_bytes_atomic(config, (json.dumps(body, indent=2) + "\n").encode())
    return weights


def read_files(path: str | Path, input_size: int | None = None,
               in_channels: int | None = None) -> tuple[BoxUNetSpec, dict[str, torch.Tensor], dict[str, Any]]:
    """Read and cross-check a saved box U-Net: ``(spec, state dict, the JSON record)``.

    Args:
        path: a folder holding ``box_unet.safetensors`` + ``box_unet.json``, or either file of a pair.
        input_size, in_channels: what the caller expects (None: anything).

    Raises:
        CheckpointError: a missing or unreadable file, or a mismatch, named in one line: the weights'
            sha256, input channels or input size against the JSON, or either against what the caller expects.
    """
    import hashlib

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_file() and path.suffix not in (".safetensors", ".json"):
        raise CheckpointError(f"{path}: not a box U-Net file; give NAME.safetensors or NAME.json of a saved "
                              f"pair, or a folder holding {DEFAULT_NAME}.safetensors + {DEFAULT_NAME}.json")
    weights, config = file_pair(path)
    for file in (weights, config):
        if not file.is_file():
            raise CheckpointError(f"{file}: not found; a box U-Net is saved as {weights.name} + {config.name}")
    try:
        body = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or not isinstance(body.get("boxes") or {}, dict):
            raise ValueError("expected a JSON object with a 'boxes' object")
        if body.get("format") != FORMAT:
            raise ValueError(f"format is {body.get('format')!r}, not {FORMAT!r}")
        if body.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"format_version {body['format_version']} is newer than this samliver reads "
                             f"({FORMAT_VERSION})")
        if list(body.get("classes", [])) != list(CLASSES):
            raise ValueError(f"classes {body.get('classes')} are not {list(CLASSES)}")
        spec = BoxUNetSpec.from_json(dict(body["network"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config}: not a usable box U-Net config ({exc})") from None
    try:
        with safe_open(str(weights), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get(_META_KEY, "{}"))
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable box U-Net weights ({exc})") from None
    if meta.get("input_size", spec.input_size) != spec.input_size:
        raise CheckpointError(f"{weights}: trained for {meta['input_size']} px input, but {config.name} says "
                              f"{spec.input_size} px; the two files come from different checkpoints")
    _check_state(state, spec, weights, config.name)
    digest = body.get("weights_sha256")
    if digest is not None and hashlib.sha256(weights.read_bytes()).hexdigest() != digest:
        raise CheckpointError(f"{weights}: not the weights {config.name} was saved with (sha256 differs); "
                              "the two files come from different saves")
    if input_size is not None and int(input_size) != spec.input_size:
        raise CheckpointError(f"{weights}: box U-Net for {spec.input_size} px input, not the {input_size} px asked for")
    if in_channels is not None and int(in_channels) != spec.in_channels:
        raise CheckpointError(f"{weights}: box U-Net for {spec.in_channels} input channel(s) (context "
                              f"{spec.context}), not the {in_channels} asked for")
    return spec, state, body


def _check_state(state: dict[str, torch.Tensor], spec: BoxUNetSpec, weights: Path, config_name: str) -> None:
    """Every tensor of the architecture ``spec`` describes is in ``state`` with its shape; the input layer's
    channel count is named on its own (the usual mix-up: a 2D checkpoint with a 2.5D config)."""
    try:
        reference = build_unet(spec).state_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights.with_name(config_name)}: network settings MONAI's UNet refuses "
                              f"({exc})") from None
    first = next(k for k, v in reference.items() if v.ndim == 4)
    if first in state and state[first].ndim == 4 and state[first].shape[1] != spec.in_channels:
        have = int(state[first].shape[1])
        raise CheckpointError(f"{weights}: weights take {have} input channel(s) (context {(have - 1) // 2}), but "
                              f"{config_name} says {spec.in_channels} (context {spec.context}); "
                              "the two files come from different checkpoints")
    missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or extra:
        raise CheckpointError(f"{weights}: tensors do not fit the U-Net in {config_name} (missing {missing[:2]}, "
                              f"unexpected {extra[:2]})")
    for key, ref in reference.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{weights}: tensor {key} has shape {tuple(state[key].shape)}, the U-Net in "
                                  f"{config_name} needs {tuple(ref.shape)}")
