"""Training data: dataset -> case split -> slice cache -> slice items -> seeded draws -> batches.

Determinism (what lets a resumed run equal an uninterrupted one): `EpochDraws` yields
``(epoch, position, slice index)`` keys, the same on every process (Accelerate then deals the
batches out to the processes); `TrainItems` derives each item's augmentation and prompt seeds from
``(run seed, epoch, position)`` only, so skipping the batches already seen after a resume gives the
very same later batches. (With ``num_workers > 0`` the augmentation stream also depends on the worker
that draws the item; resumed runs then match only with ``num_workers: 0``, the default.)

Slices holding voxels whose label is unknown (a pseudo-label folder's ``uncertain/`` masks: objects the
teacher's filter rejected) are left out of training (`uncertain_slices`), never trained as background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from samliver.data import (CacheIndex, CaseCache, SliceDataset, TumorOversampler, build_augment, collate_slices,
                           load_dataset, load_split, model_pixels, open_cache, prepare_cache, split_cases)
from samliver.data.layouts import nifti_stem
from samliver.data.splits import check_split
from samliver.errors import DatasetError
from samliver.io import load_label

from .config import ConfigError, TrainConfig
from .prompting import PromptSimulator


def item_seed(seed: int, *key: int) -> int:
    """A 32-bit seed from the run seed and an item key (epoch, position, ...)."""
    return int(np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(1)[0])


@dataclass
class CaseSplit:
    """Case names per part, the cache folders that hold them, and the phantom generator version."""

    train: list[str]
    val: list[str]
    test: list[str]
    cache: CacheIndex
    test_cache: CacheIndex | None
    phantom_version: int | None

    def as_json(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "test": self.test, "phantom_version": self.phantom_version}

    def cases(self, part: str) -> list[CaseCache]:
        """The cached cases of ``part`` (``train``, ``val`` or ``test``)."""
        if part == "test":
            return [(self.test_cache if self.test_cache is not None and n in self.test_cache else self.cache)[n]
                    for n in self.test]
        return [self.cache[n] for n in getattr(self, part)]


def split_and_cache(config: TrainConfig, cache_root: Path, is_main: bool, wait) -> CaseSplit:
    """Read the dataset(s), split by case, and build (main process) or open (others) the caches.

    ``wait`` is a barrier (``accelerator.wait_for_everyone``): the main process builds first.

    Raises:
        DatasetError / ConfigError: a missing or unusable dataset, a bad split, or test cases that
            also occur in training or validation.
    """
    dataset = load_dataset(config.data)
    names = dataset.names
    if config.split_file:
        parts = load_split(config.split_file, names)
    else:
        parts = split_cases(names, config.split, seed=config.split_seed)
    train, val, test = list(parts.get("train", [])), list(parts.get("val", [])), list(parts.get("test", []))
    check_split({"train": train, "val": val, "test": test}, names, where=config.split_file or "split")
    if not train:
        raise DatasetError(f"{config.data}: the split leaves no training case "
                           f"({len(names)} cases, split {config.split})")
    test_set = load_dataset(config.test_data) if config.test_data else None
    extra = list(test_set.names) if test_set is not None else []
    overlap = sorted(set(extra) & set(train + val))
    if overlap:
        raise ConfigError(f"test_data {config.test_data}: cases {', '.join(overlap[:3])} are also training or "
                          "validation cases; test cases must be held out (other phantom seeds)")
    settings = dict(config.cache)
    main_cache, test_cache = cache_root / "data", cache_root / "test"
    if is_main:
        prepare_cache(dataset.subset(train + val + test), main_cache, settings, strict=True, progress=True)
        if test_set is not None:
            prepare_cache(test_set, test_cache, settings, strict=True, progress=True)
    wait()
    cache = open_cache(main_cache)
    tcache = open_cache(test_cache) if test_set is not None else None
    version = None
    if dataset.layout == "phantom":
        from samliver.data import PHANTOM_VERSION

        version = PHANTOM_VERSION
    return CaseSplit(train, val, test + extra, cache, tcache, version)


class _CpuPixels:
    """What `model_pixels` needs of a model (its convention; the CPU as device), so items can be
    turned into model pixels in DataLoader workers without touching the model itself."""

    def __init__(self, convention: Any) -> None:
        self.convention = convention
        self.device = torch.device("cpu")


class TrainItems(Dataset):
    """Training items keyed by `EpochDraws` keys ``(epoch, position, slice index)``.

    Each item is a `SliceDataset` item (augmented with a stream seeded from the key) plus
    ``prompt_seed`` and ``pixels`` (model pixels ``(D, 3, S, S)``, D = 1 for 2D models) or, with an
    embedding ``store`` (frozen encoder), ``image_embeddings`` ``(C, h, w)`` (and ``high_res_features``)
    of the un-augmented slice. With a ``prompter`` (`samliver.training.prompting.PromptSimulator`) the
    item also carries its ``prompt_plan``, and its ``objects`` / ``object_labels`` are cut to the objects
    that plan prompts (so only those travel to the device).
    """

    def __init__(self, slices: SliceDataset, seed: int, convention: Any, store: Any = None,
                 store_rows: dict[int, int] | None = None, prompter: PromptSimulator | None = None) -> None:
        self.slices, self.seed = slices, int(seed)
        self.pixels = _CpuPixels(convention)
        self.store, self.store_rows = store, store_rows or {}
        self.prompter = prompter

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        epoch, position, index = (int(k) for k in key)
        if self.slices.augment is not None:
            self.slices.augment.set_random_state(item_seed(self.seed, epoch, position, 1))
        item = self.slices[index]
        item["prompt_seed"] = item_seed(self.seed, epoch, position, 2)
        if self.prompter is not None:
            plan, keep = self.prompter(item["objects"].numpy(), item["object_labels"].numpy(), item["prompt_seed"])
            item["prompt_plan"] = plan
            item["objects"], item["object_labels"] = item["objects"][keep], item["object_labels"][keep]
        if self.store is None:
            item["pixels"] = model_pixels(self.pixels, item["image"][None])[0]          # (D, 3, S, S)
        else:
            row = self.store_rows[index]
            item["image_embeddings"] = self.store.image_embeddings[row]
            if self.store.high_res_features is not None:
                item["high_res_features"] = tuple(f[row] for f in self.store.high_res_features)
        return item


def collate_train(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`collate_slices` plus ``prompt_seed`` ``(B,)``, ``prompt_plans`` (a list, where items carry plans) and
    ``pixels`` / ``image_embeddings`` stacked."""
    batch = collate_slices(items)
    batch["prompt_seed"] = torch.tensor([it["prompt_seed"] for it in items], dtype=torch.long)
    if "prompt_plan" in items[0]:
        batch["prompt_plans"] = [it["prompt_plan"] for it in items]
    for key in ("pixels", "image_embeddings"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    if "high_res_features" in items[0]:
        levels = zip(*(it["high_res_features"] for it in items))
        batch["high_res_features"] = tuple(torch.stack(level) for level in levels)
    return batch


class EpochDraws(Sampler):
    """Each epoch, ``num_samples`` draws from ``indices`` with `TumorOversampler` (one global stream,
    the same on every process), yielded as ``(epoch, position, slice index)`` keys.

    The epoch is set with `use_epoch` (deliberately not ``set_epoch``, which Accelerate's prepared
    loaders call on their own with their iteration count, which restarts after a resume).
    """

    def __init__(self, indices: np.ndarray, tumor_flags: np.ndarray, tumor_fraction: float | None,
                 num_samples: int, seed: int) -> None:
        self.indices = np.asarray(indices)
        self.draws = TumorOversampler(np.asarray(tumor_flags, bool), tumor_fraction, num_samples=num_samples, seed=seed)
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.draws.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.draws)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for position, i in enumerate(self.draws):
            yield (self.epoch, position, int(self.indices[i]))


@dataclass
class TrainLoader:
    """The training DataLoader and what the loop needs to know about it."""

    loader: DataLoader
    sampler: EpochDraws
    steps_per_epoch: int
    slices: int
    precomputed: bool


def training_slices(slices: SliceDataset, kind: str, targets: Sequence[str]) -> np.ndarray:
    """Slice indices to train on: every slice for a prompt-free head (background teaches it too), the
    slices that hold an object of the targets for prompted training."""
    if kind == "head":
        return np.arange(len(slices))
    wanted = np.zeros(len(slices), bool)
    if "liver" in targets:
        wanted |= slices.liver_flags
    if "tumor" in targets:
        wanted |= slices.tumor_flags
    return np.flatnonzero(wanted)


UNCERTAIN_DIR = "uncertain"


def uncertain_slices(data: str, cases: Sequence[CaseCache]) -> np.ndarray:
    """``(total Z,)`` bool over the slices of ``cases`` (in order, as `SliceDataset` numbers them): True where
    the dataset folder ``data`` has an ``uncertain/<case>.nii[.gz]`` mask with any voxel on that slice.

    Self-training's pseudo-label folders (`samliver.training.pseudo_data.write_pseudo`) write one per
    pseudo-labelled case: the voxels of objects the teacher's confidence filter rejected. Their label is
    unknown (the file under ``labels/`` says 0 or 1 there), so slices holding any must not be trained on
    as if it were known. All False for a dataset without such a folder (or a spec that is no folder).

    Raises:
        DatasetError: a mask whose grid is not its case's.
    """
    flags = [np.zeros(c.shape[0], bool) for c in cases]
    root = Path(data)
    folder = (root.parent if root.is_file() else root) / UNCERTAIN_DIR
    if not folder.is_dir():
        return np.concatenate(flags) if flags else np.zeros(0, bool)
    files = {nifti_stem(p): p for p in folder.iterdir() if p.is_file() and nifti_stem(p)}
    for i, case in enumerate(cases):
        path = files.get(case.name)
        if path is None:
            continue
        mask = load_label(path)
        if mask.shape != tuple(case.source_shape):
            raise DatasetError(f"{path}: uncertain-voxel mask of shape {mask.shape}, but case {case.name} has "
                               f"{tuple(case.source_shape)} voxels")
        flags[i] = mask.any(axis=(1, 2))
    return np.concatenate(flags) if flags else np.zeros(0, bool)


def build_train_loader(config: TrainConfig, split: CaseSplit, model: torch.nn.Module, kind: str,
                       frozen_encoder: bool, num_processes: int, log,
                       prompter: PromptSimulator | None = None) -> TrainLoader:
    """The training loader (see the module docstring). With a frozen encoder the slices are encoded once
    here (`samliver.adapters.decoder.precompute_embeddings`) and no image augmentation is applied. A
    ``prompter`` (the prompted step's) draws each item's prompts in the loader (`TrainItems`)."""
    from samliver.inference import stack_depth

    augment = None
    if config.augment is not False and config.augment != {}:
        if frozen_encoder:
            log("augmentation is off: the frozen encoder's embeddings are precomputed from un-augmented slices")
        else:
            augment = build_augment(None if config.augment is True else config.augment)
    slices = SliceDataset(split.cache, split.train, stack_depth=stack_depth(model), targets=config.targets,
                          augment=augment)
    indices = training_slices(slices, kind, slices.targets)
    unknown = uncertain_slices(config.data, slices.cases)[indices]
    if unknown.any():   # an ignore region in the losses would keep their certain pixels; left out whole for now
        log(f"left out {int(unknown.sum())} training slices that hold voxels of pseudo-label objects the "
            "teacher's filter rejected (their labels are unknown)")
        indices = indices[~unknown]
    if indices.size == 0:
        raise DatasetError(f"{config.data}: no training slice holds a {' or '.join(slices.targets)} object")
    store, rows = None, None
    if frozen_encoder:
        from samliver.adapters.decoder import precompute_embeddings

        plain = SliceDataset(split.cache, split.train, stack_depth=1, targets=config.targets)
        log(f"precomputing embeddings of {indices.size} training slices (frozen encoder)")
        with torch.no_grad():
            store = precompute_embeddings(model, Subset(plain, indices.tolist()),
                                          batch_size=config.embedding_batch_size, device="cpu")
        rows = {int(i): r for r, i in enumerate(indices)}
    per_step = config.batch_size * config.gradient_accumulation_steps * num_processes
    steps_per_epoch = max(1, math.ceil(indices.size / per_step))
    tumor_flags = slices.tumor_flags[indices] if "tumor" in slices.targets else np.zeros(indices.size, bool)
    sampler = EpochDraws(indices, tumor_flags, config.tumor_fraction,
                         steps_per_epoch * per_step, config.seed)
    items = TrainItems(slices, config.seed, model.convention, store, rows, prompter)
    # Pinned host memory lets the copies to the GPU run asynchronously; workers persist across epochs.
    loader = DataLoader(items, batch_size=config.batch_size, sampler=sampler, collate_fn=collate_train,
                        num_workers=config.num_workers, drop_last=False, pin_memory=torch.cuda.is_available(),
                        persistent_workers=config.num_workers > 0)
    return TrainLoader(loader, sampler, steps_per_epoch, int(indices.size), store is not None)


def eval_loader(count: int) -> DataLoader:
    """A loader of case indices ``0..count-1``, one per batch (Accelerate shards it over processes)."""
    return DataLoader(list(range(count)), batch_size=1, shuffle=False)
