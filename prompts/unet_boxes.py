"""Automatic box prompts from a small MONAI U-Net (``samliver.prompts.unet_boxes``).

A `UNetBoxGenerator` is a callable ``(hu (Z, Y, X) float32 HU, spacing (z, y, x) mm) -> {slice: Prompts}``:
the U-Net (`samliver.prompts.unet_model`) gives coarse liver / tumour probabilities per slice, and
`samliver.prompts.component_boxes` turns them into one box per connected component (threshold, 3D
persistence, minimum area in mm², margin in mm). Boxes are ``x0, y0, x1, y1`` in the input slice's pixels;
labels 1 liver, 2 tumour; slices without a box have no entry.

    gen = bundled_box_generator()                   # trained on liver-tumour phantoms, shipped in weights/
    prompts = gen(ct.array, ct.spacing)
    mask = Predictor(model).segment_volume(ct, prompts)

Train one with ``python train_box_unet.py`` (`samliver.training.box_unet`); save with ``gen.save(folder)``,
load with `load_box_generator`.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from samliver.errors import CheckpointError, PromptError, WeightsNotFoundError

from .component_boxes import LIVER, MIN_AREA_MM2, TUMOR, boxes_from_masks, check_spacing, class_masks
from .types import Prompts
from .unet_model import BoxUNetSpec, build_unet, file_pair, grey_slices, read_files, stacks, write_files

BUNDLED_NAME = "box_unet_phantom"
BUNDLED_TRAIN = "bash scripts/train_box_unet.sh"
#: the generator's probability threshold when none is given
DEFAULT_THRESHOLD = 0.5
#: box parameters a generator has (keyword arguments of `boxes_from_probabilities`)
BOX_PARAMS = ("threshold", "margin_mm", "min_area_mm2", "min_slices", "low_threshold")
#: what a generator saves as its defaults: the box parameters and test-time mirroring
SAVED_PARAMS = (*BOX_PARAMS, "mirror")
#: flips (dims of a ``(B, C, S, S)`` batch) averaged by test-time mirroring: none, columns, rows, both
MIRRORS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


class UNetBoxGenerator:
    """Box prompts from a box U-Net (see the module docstring).

    Args:
        net: the MONAI U-Net (`samliver.prompts.unet_model.build_unet`), trained or not.
        spec: its `BoxUNetSpec` (input size, context slices, CT window).
        threshold: class probability at or above which a pixel belongs to the class (liver: p(liver) + p(tumour)).
        low_threshold: hysteresis (`samliver.prompts.component_boxes.class_masks`): pixels at or above it join a
            component above ``threshold`` they touch in the slice (None: off).
        margin_mm: each box grows by this many mm on every side.
        min_area_mm2: per-slice components smaller than this are dropped.
        min_slices: a component must belong to a 3D component spanning at least this many slices (1: off).
        mirror: test-time mirroring: average the softmax over each slice and its row, column and row+column
            mirror images (4 forward passes; the training flips both axes), as nnU-Net predicts.
        batch_size: slices per forward pass.
        device: where the network runs.
        record: the saved JSON (training info), kept for `save`.
    """

    def __init__(self, net: nn.Module, spec: BoxUNetSpec, threshold: float = DEFAULT_THRESHOLD,
                 margin_mm: float = 3.0, min_area_mm2: float = MIN_AREA_MM2, min_slices: int = 2,
                 low_threshold: float | None = None,
                 mirror: bool = False, batch_size: int = 16, device: str | torch.device = "cpu",
                 record: dict[str, Any] | None = None) -> None:
        check_params(threshold=threshold, margin_mm=margin_mm, min_area_mm2=min_area_mm2, min_slices=min_slices,
                     low_threshold=low_threshold, mirror=mirror, batch_size=batch_size)
        check_hysteresis(threshold, low_threshold)
        self.spec = spec
        self.net = net.eval()
        self.threshold, self.margin_mm = float(threshold), float(margin_mm)
        self.min_area_mm2, self.min_slices = float(min_area_mm2), int(min_slices)
        self.low_threshold = None if low_threshold is None else float(low_threshold)
        self.mirror = bool(mirror)
        self.batch_size = int(batch_size)
        self.record = dict(record or {})
        self.to(device)

    def to(self, device: str | torch.device) -> "UNetBoxGenerator":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    @property
    def box_params(self) -> dict[str, float | int]:
        """The `BOX_PARAMS` (keyword arguments of `boxes_from_probabilities`)."""
        return {name: getattr(self, name) for name in BOX_PARAMS}

    @property
    def settings(self) -> dict[str, float | int | bool]:
        """The `SAVED_PARAMS`: what `save` records as the loaded generator's defaults."""
        return {name: getattr(self, name) for name in SAVED_PARAMS}

    def _input(self, hu: np.ndarray) -> np.ndarray:
        hu = np.asarray(hu)
        if hu.ndim != 3 or 0 in hu.shape:
            raise PromptError(f"hu: expected a (Z, Y, X) volume in HU, got shape {hu.shape}")
        if not np.issubdtype(hu.dtype, np.number) or np.issubdtype(hu.dtype, np.complexfloating):
            raise PromptError(f"hu: expected real HU values, got dtype {hu.dtype}")
        return grey_slices(hu, self.spec)

    def _low_res(self, grey: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first slice, softmax probabilities (B, 3, S, S))`` batch by batch."""
        with torch.inference_mode():
            for start in range(0, grey.shape[0], self.batch_size):
                batch = stacks(grey, range(start, min(start + self.batch_size, grey.shape[0])), self.spec.context)
                yield start, self._softmax(batch.to(self.device))

    def _softmax(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, 3, S, S)`` of ``batch`` ``(B, C, S, S)``, averaged over `MIRRORS` if mirroring."""
        flips = MIRRORS if self.mirror else ((),)
        total = None
        for dims in flips:
            probs = torch.softmax(self.net(batch.flip(dims) if dims else batch).float(), dim=1)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
        return total / len(flips)

    def probabilities(self, hu: np.ndarray) -> np.ndarray:
        """Softmax probabilities ``(Z, 3, Y, X)`` float32 (background, liver, tumour) at the input's size,
        for ``hu`` ``(Z, Y, X)`` in HU (bilinear from the network's ``S x S``, pixel edges aligned)."""
        grey = self._input(hu)
        z, h, w = np.shape(hu)
        out = np.empty((z, 3, h, w), np.float32)
        for start, probs in self._low_res(grey):
            out[start:start + len(probs)] = _resize(probs, (h, w)).cpu().numpy()
        return out

    def masks(self, hu: np.ndarray) -> dict[int, np.ndarray]:
        """Thresholded class masks ``{1: liver, 2: tumour}``, each ``(Z, Y, X)`` bool, at the input's size
        (computed batch by batch, so a large CT never holds all its probabilities at once)."""
        grey = self._input(hu)
        z, h, w = np.shape(hu)
        out = {LIVER: np.zeros((z, h, w), bool), TUMOR: np.zeros((z, h, w), bool)}
        for start, probs in self._low_res(grey):
            found = class_masks(_resize(probs, (h, w)).cpu().numpy(), self.threshold, self.low_threshold)
            for label, mask in found.items():
                out[label][start:start + len(mask)] = mask
        return out

    def __call__(self, hu: np.ndarray, spacing: Sequence[float]) -> dict[int, Prompts]:
        """Box prompts ``{slice index: Prompts(boxes (N, 4) xyxy pixels, labels (N,))}`` for a CT ``hu``
        ``(Z, Y, X)`` HU with ``spacing`` ``(z, y, x)`` mm; liver boxes first, then tumour boxes."""
        spacing = check_spacing(spacing)
        return boxes_from_masks(self.masks(hu), spacing, self.margin_mm, self.min_area_mm2, self.min_slices)

    def save(self, path: str | Path, training: dict[str, Any] | None = None) -> Path:
        """Write ``NAME.safetensors`` + ``NAME.json`` for ``path = .../NAME.safetensors`` (or ``.json``), else
        ``box_unet.safetensors`` + ``box_unet.json`` into folder ``path`` (created); returns the safetensors
        path. The box parameters and ``mirror`` are saved as the loaded generator's defaults."""
        record = {k: v for k, v in self.record.items() if k in ("training",)}
        if training is not None:
            record["training"] = training
        return write_files(self.net, self.spec, path, {"boxes": self.settings, **record})

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return (f"UNetBoxGenerator({self.spec.input_size} px, {self.spec.in_channels} channel(s), "
                f"window {self.spec.window}, {params})")


def check_params(**params: Any) -> None:
    """Check generator parameters (any of `SAVED_PARAMS` and ``batch_size``); raises `PromptError` naming
    the bad one."""
    if "mirror" in params and not isinstance(params["mirror"], (bool, np.bool_)):
        raise PromptError(f"mirror: must be true or false, got {params['mirror']!r}")
    if params.get("low_threshold", 0.5) is None:
        params = {k: v for k, v in params.items() if k != "low_threshold"}
    rules = {"threshold": (lambda v: 0.0 < v < 1.0, "must lie strictly between 0 and 1"),
             "low_threshold": (lambda v: 0.0 < v < 1.0, "must lie strictly between 0 and 1 (or be null: off)"),
             "margin_mm": (lambda v: v >= 0, "must be 0 or more (mm)"),
             "min_area_mm2": (lambda v: v >= 0, "must be 0 or more (mm²)"),
             "min_slices": (lambda v: v >= 1 and float(v).is_integer(), "must be a whole number of slices >= 1"),
             "batch_size": (lambda v: v >= 1 and float(v).is_integer(), "must be a whole number >= 1")}
    for name, value in params.items():
        if name == "mirror":
            continue
        if name not in rules:
            raise PromptError(f"unknown box parameter {name!r}; known: {', '.join([*rules, 'mirror'])}")
        ok, text = rules[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or not ok(value):
            raise PromptError(f"{name}: {text}, got {value!r}")


def check_hysteresis(threshold: float, low_threshold: float | None) -> None:
    """Hysteresis grows components from ``threshold`` down to ``low_threshold``, so the low one may not be higher;
    raises `PromptError` naming both."""
    if low_threshold is not None and low_threshold > threshold:
        raise PromptError(f"low_threshold: must not exceed threshold {threshold}, got {low_threshold}")


def _resize(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, K, S, S)`` -> ``(B, K, H, W)``; bilinear with half-pixel centres, as ``grid_mode`` zoom resizes."""
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs, size=size, mode="bilinear", align_corners=False)


def load_box_generator(path: str | Path, device: str | torch.device = "cpu", input_size: int | None = None,
                       in_channels: int | None = None, **box_params: Any) -> UNetBoxGenerator:
    """Load a saved box U-Net: a folder with ``box_unet.safetensors`` + ``box_unet.json``, or either file of
    a ``NAME.safetensors`` / ``NAME.json`` pair.

    Args:
        input_size, in_channels: refuse a checkpoint made for another input size / channel count.
        box_params: override the saved ``threshold``, ``low_threshold``, ``margin_mm``, ``min_area_mm2``,
            ``min_slices``, ``mirror`` (and ``batch_size``).

    Raises:
        CheckpointError: a missing file, weights that do not fit their JSON or the request, or saved box
            parameters out of range (one line, naming the file).
        PromptError: ``box_params`` out of range, or a ``low_threshold`` above the threshold.
    """
    check_params(**box_params)
    spec, state, record = read_files(path, input_size=input_size, in_channels=in_channels)
    net = build_unet(spec)
    net.load_state_dict(state)
    saved = {k: v for k, v in dict(record.get("boxes") or {}).items() if k in SAVED_PARAMS}
    try:
        check_params(**saved)
        check_hysteresis(saved.get("threshold", DEFAULT_THRESHOLD), saved.get("low_threshold"))
    except PromptError as exc:
        raise CheckpointError(f"{file_pair(path)[1]}: saved boxes.{exc}") from None
    return UNetBoxGenerator(net, spec, **{**saved, **box_params}, device=device, record=record)


def bundled_box_path() -> Path:
    """The shipped ``box_unet_phantom.safetensors``: the first of `samliver.weights_store.search_dirs` that
    holds it (``$SAMLIVER_WEIGHTS``, the installed ``samliver.weights`` folder, the user cache)."""
    from samliver.weights_store import search_dirs

    dirs = search_dirs()
    for folder in dirs:
        path = folder / f"{BUNDLED_NAME}.safetensors"
        if path.is_file() and path.with_suffix(".json").is_file():
            return path
    raise WeightsNotFoundError(f"{BUNDLED_NAME}.safetensors + .json not found in {', '.join(map(str, dirs))}; "
                               f"in a source checkout `{BUNDLED_TRAIN}` trains them")


def bundled_box_generator(device: str | torch.device = "cpu", **box_params: Any) -> UNetBoxGenerator:
    """The box U-Net shipped with samliver (trained on ``phantom:liver-tumor`` cases; see its JSON for the
    seeds, the training run and its held-out box recall). ``box_params`` as in `load_box_generator`."""
    return load_box_generator(bundled_box_path(), device=device, **box_params)


__all__ = ["BOX_PARAMS", "BUNDLED_NAME", "DEFAULT_THRESHOLD", "MIRRORS", "SAVED_PARAMS", "UNetBoxGenerator",
           "bundled_box_generator", "bundled_box_path", "check_hysteresis", "check_params", "load_box_generator"]
