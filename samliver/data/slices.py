"""PyTorch datasets of cached axial slices (2D) or stacks of D adjacent slices (3D depth adapters),
with the slice's objects for promptable training and its label map for prompt-free heads.

Model input: items carry the windowed slice as float ``[0, 1]`` (grey value / 255, the window applied
exactly as the model's own ``preprocess`` does). The trainer turns a batch into model pixels with
`samliver.data.intensity.model_pixels(model, batch["image"])`, which applies the model's own convention
(SAM / MedSAM / SAM 2) after the window; the window is fixed by the cache (uint8) or chosen here (int16).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset as TorchDataset

from samliver.data.cache import CacheIndex, open_cache
from samliver.data.case import LIVER, TUMOR
from samliver.data.intensity import Window, WindowLike, window_for, window_to_uint8
from samliver.inference import stack_indices

TARGETS = ("liver", "tumor")
_EIGHT = np.ones((3, 3), dtype=int)


def objects_from_label(label: np.ndarray, *, liver: bool = True, tumor: bool = True,
                       min_pixels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The prompted objects of one slice's label map ``(H, W)`` (0/1/2).

    Args:
        liver: include the liver (labels 1 and 2, i.e. tumours are part of the organ) as one object.
        tumor: include each 8-connected tumour component (label 2) as its own object.
        min_pixels: drop objects smaller than this many pixels.

    Returns:
        ``(masks (N, H, W) bool, labels (N,) int64)``: the liver first (label 1), then tumour components
        (label 2) in raster order of their first pixel. Written in label order (higher wins on
        overlap) the objects give back the label map restricted to the chosen targets.
    """
    label = np.asarray(label)
    masks: list[np.ndarray] = []
    labels: list[int] = []
    if liver:
        organ = label >= LIVER
        if organ.sum() >= max(min_pixels, 1):
            masks.append(organ)
            labels.append(LIVER)
    if tumor:
        comps, n = ndimage.label(label == TUMOR, structure=_EIGHT)
        if n:
            sizes = np.bincount(comps.ravel(), minlength=n + 1)
            for k in range(1, n + 1):
                if sizes[k] >= max(min_pixels, 1):
                    masks.append(comps == k)
                    labels.append(TUMOR)
    h, w = label.shape
    stack = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    return stack, np.asarray(labels, np.int64)


class SliceDataset(TorchDataset):
    """Every axial slice of the cached cases, as a 2D slice or a stack of D neighbours.

    Args:
        cache: a `CacheIndex` or a cache folder (`open_cache`).
        case_names: the cases to use, in order (e.g. one split); None: all cached cases.
        stack_depth: D, odd; 1 gives 2D slices. Slice ``z``'s stack is ``z - D//2 .. z + D//2``; at the
            volume's ends the edge slice is repeated (replicate padding), so every stack has D slices.
        targets: ``"liver"`` and/or ``"tumor"``. The label map keeps only these classes (liver only:
            liver and tumour voxels are 1; tumour only: tumour voxels are 2, the rest 0) and objects are
            made only for them. Cases without a liver label (``has_liver`` False) never give a liver object.
        augment: a callable on the sample dict (`samliver.data.augment.build_augment`), applied to image,
            label map and object masks together; objects it moves out of view are dropped.
        window: ``(lo, hi)`` HU (or a name for `window_for`) for int16 (HU) caches; default the cache's.
            A uint8 cache is already windowed: only its own window (or None) is accepted.
        min_object_pixels: objects smaller than this are not returned.
        with_objects: False leaves ``objects`` / ``object_labels`` out of the items, for training that only
            needs the label map (the box U-Net), saving the time to find and warp them.

    Item ``i`` is a dict:

    - ``image``: float32 ``(D, H, W)`` windowed grey values in ``[0, 1]`` (``(1, H, W)`` for 2D);
    - ``label``: int64 ``(H, W)`` classes 0/1/2 of the centre slice;
    - ``objects``: bool ``(N, H, W)`` masks; ``object_labels``: int64 ``(N,)`` (1 liver, 2 tumour); both
      left out with ``with_objects=False``;
    - ``case`` (str), ``slice`` (int, centre slice index), ``spacing`` float32 ``(3,)`` (z, y, x) mm.

    ``tumor_flags`` / ``liver_flags`` ``(len,)`` bool say which items' centre slices hold tumour / liver
    (for `samliver.data.sampling.TumorOversampler`).
    """

    def __init__(self, cache: CacheIndex | str | os.PathLike[str], case_names: Sequence[str] | None = None,
                 stack_depth: int = 1, targets: Sequence[str] = TARGETS,
                 augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 window: WindowLike | None = None, min_object_pixels: int = 1, with_objects: bool = True) -> None:
        self.cache = cache if isinstance(cache, CacheIndex) else open_cache(cache)
        if isinstance(stack_depth, bool) or int(stack_depth) < 1 or int(stack_depth) % 2 == 0:
            raise ValueError(f"stack_depth must be an odd positive integer; got {stack_depth!r}")
        self.stack_depth = int(stack_depth)
        self.targets = _targets(targets)
        self.augment = augment
        self.min_object_pixels = int(min_object_pixels)
        self.with_objects = bool(with_objects)
        self.window = self._window(window)
        names = self.cache.names if case_names is None else list(case_names)
        self.cases = [self.cache[n] for n in names]
        lengths = [c.shape[0] for c in self.cases]
        self._case = np.repeat(np.arange(len(self.cases)), lengths)
        self._slice = np.concatenate([np.arange(n) for n in lengths]) if lengths else np.zeros(0, int)
        self.tumor_flags = np.concatenate([c.tumor_slices for c in self.cases]) if lengths else np.zeros(0, bool)
        self.liver_flags = np.concatenate([c.liver_slices for c in self.cases]) if lengths else np.zeros(0, bool)

    def _window(self, window: WindowLike | None) -> Window:
        own = self.cache.settings.window
        if window is None:
            return own
        win = window_for(window)
        if self.cache.settings.dtype == "uint8" and win != own:
            raise ValueError(f"cache {self.cache.root} is stored windowed at {own} HU; window {win} needs an "
                             "int16 (HU) cache: prepare it with dtype='int16'")
        return win

    def __len__(self) -> int:
        return int(self._case.size)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cases]

    def locate(self, index: int) -> tuple[str, int]:
        """``(case name, slice index)`` of item ``index``."""
        return self.cases[self._case[index]].name, int(self._slice[index])

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the augmentation (if it has ``set_epoch``), for per-epoch streams."""
        if hasattr(self.augment, "set_epoch"):
            self.augment.set_epoch(epoch)  # type: ignore[union-attr]

    def stack_indices(self, index: int) -> np.ndarray:
        """The D slice indices of item ``index``'s stack, edge slices repeated at the volume's ends."""
        case, z = self.cases[self._case[index]], int(self._slice[index])
        return stack_indices(z, case.shape[0], self.stack_depth)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"slice index {index} out of range for {len(self)} slices")
        index = int(index) % len(self)
        case, z = self.cases[self._case[index]], int(self._slice[index])
        raw = np.asarray(case.image[self.stack_indices(index)])
        grey = raw if raw.dtype == np.uint8 else window_to_uint8(raw, self.window)
        image = torch.from_numpy(grey.astype(np.float32) / np.float32(255.0))
        label = np.array(case.label[z])
        if self.targets == ("liver",):
            label = (label >= LIVER).astype(np.uint8) * np.uint8(LIVER)
        elif self.targets == ("tumor",):
            label = (label == TUMOR).astype(np.uint8) * np.uint8(TUMOR)
        sample: dict[str, Any] = {"image": image, "label": torch.from_numpy(label.astype(np.int64)),
                                  "case": case.name, "slice": z,
                                  "spacing": torch.tensor(case.spacing, dtype=torch.float32)}
        if self.with_objects:
            masks, labels = objects_from_label(label, liver="liver" in self.targets and case.has_liver,
                                               tumor="tumor" in self.targets, min_pixels=self.min_object_pixels)
            sample["objects"], sample["object_labels"] = torch.from_numpy(masks), torch.from_numpy(labels)
        if self.augment is not None:
            sample = self.augment(sample)
            if self.with_objects:
                objects, labels = sample["objects"], sample["object_labels"]
                keep = objects.flatten(1).any(1) if len(labels) else torch.zeros(0, dtype=torch.bool)
                sample["objects"], sample["object_labels"] = objects[keep], labels[keep]
        return sample


def collate_slices(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch `SliceDataset` items for a DataLoader, padding the object lists.

    Returns:
        ``image`` ``(B, D, H, W)``, ``label`` ``(B, H, W)``, ``objects`` ``(B, N, H, W)`` bool (N = most
        objects of any item; padding all False), ``object_labels`` ``(B, N)`` (0 for padding),
        ``object_valid`` ``(B, N)`` bool, ``num_objects`` ``(B,)``, ``case`` list of str, ``slice`` ``(B,)``
        and ``spacing`` ``(B, 3)``. Items of different in-plane sizes raise ValueError (prepare the cache
        with a fixed ``size`` to batch such cases).
    """
    sizes = {tuple(item["image"].shape) for item in batch}
    if len(sizes) > 1:
        raise ValueError(f"cannot batch slices of different sizes {sorted(sizes)}; prepare the cache with size=PX")
    n_max = max(int(item["objects"].shape[0]) for item in batch)
    h, w = batch[0]["label"].shape
    objects = torch.zeros((len(batch), n_max, h, w), dtype=torch.bool)
    labels = torch.zeros((len(batch), n_max), dtype=torch.long)
    counts = torch.tensor([int(item["objects"].shape[0]) for item in batch], dtype=torch.long)
    for b, item in enumerate(batch):
        n = int(counts[b])
        objects[b, :n], labels[b, :n] = item["objects"], item["object_labels"]
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "label": torch.stack([item["label"] for item in batch]),
        "objects": objects, "object_labels": labels,
        "object_valid": torch.arange(n_max)[None, :] < counts[:, None], "num_objects": counts,
        "case": [item["case"] for item in batch],
        "slice": torch.tensor([int(item["slice"]) for item in batch], dtype=torch.long),
        "spacing": torch.stack([torch.as_tensor(item["spacing"], dtype=torch.float32) for item in batch]),
    }


def _targets(targets: Sequence[str]) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    norm = {"tumour": "tumor", "lesion": "tumor"}
    chosen = {norm.get(t.lower(), t.lower()) for t in targets}
    unknown = chosen - set(TARGETS)
    if unknown or not chosen:
        raise ValueError(f"targets must be among {', '.join(TARGETS)}; got {list(targets)}")
    return tuple(t for t in TARGETS if t in chosen)
