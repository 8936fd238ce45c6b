"""`TumorOversampler`: draws slices so that a chosen fraction of them hold tumour.

Tumour slices are rare (a few percent of a LiTS volume's slices), so uniform sampling trains the
tumour objects on a trickle. This sampler draws each sample from the tumour slices with probability
``tumor_fraction`` and from the other slices otherwise (uniformly within each group, with replacement),
so the expected fraction of tumour slices is exactly ``tumor_fraction``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class TumorOversampler(Sampler[int]):
    """Sample slice indices with a fixed expected fraction of tumour slices; shardable across ranks.

    Args:
        dataset: a `samliver.data.slices.SliceDataset` (its ``tumor_flags``) or a ``(len,)`` bool array
            of per-item tumour flags.
        tumor_fraction: expected fraction of tumour slices among the draws, in ``[0, 1]``; None keeps the
            natural fraction (uniform sampling). When the dataset (or a rank's shard) has no tumour
            slice, or only tumour slices, draws are uniform.
        num_samples: draws per epoch and rank; default ``ceil(len(dataset) / world_size)``.
        seed: the draws are a function of ``(seed, epoch, rank)`` only; call `set_epoch` each epoch.
        rank, world_size: DistributedSampler-style sharding. Each epoch the tumour slices and the other
            slices are each shuffled (the same way on every rank, from ``(seed, epoch)``) and dealt out
            round-robin, so ranks draw from disjoint sets of slices. A group with fewer slices than
            ranks is shared by all ranks instead (it could not be split without leaving ranks empty).
    """

    def __init__(self, dataset: Any, tumor_fraction: float | None = 0.5, num_samples: int | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        flags = np.asarray(getattr(dataset, "tumor_flags", dataset), dtype=bool)
        if flags.ndim != 1 or flags.size == 0:
            raise ValueError("TumorOversampler needs a non-empty dataset (or a 1D array of tumour flags)")
        if tumor_fraction is not None and not 0.0 <= float(tumor_fraction) <= 1.0:
            raise ValueError(f"tumor_fraction must lie in [0, 1]; got {tumor_fraction}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size; got rank {rank}, world_size {world_size}")
        self.flags = flags
        self.tumor_fraction = None if tumor_fraction is None else float(tumor_fraction)
        self.rank, self.world_size, self.seed, self.epoch = int(rank), int(world_size), int(seed), 0
        self.num_samples = int(num_samples) if num_samples is not None else math.ceil(flags.size / world_size)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive; got {num_samples}")

    @property
    def natural_fraction(self) -> float:
        """Fraction of tumour slices in the dataset (what uniform sampling gives)."""
        return float(self.flags.mean())

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s draws (as `torch.utils.data.DistributedSampler`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def shard(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's ``(tumour slice indices, other slice indices)`` for the current epoch."""
        shuffle = np.random.default_rng([self.seed, self.epoch])
        groups = []
        for group in (np.flatnonzero(self.flags), np.flatnonzero(~self.flags)):
            group = shuffle.permutation(group)
            groups.append(group[self.rank::self.world_size] if group.size >= self.world_size else group)
        return groups[0], groups[1]

    def __iter__(self) -> Iterator[int]:
        tumor, other = self.shard()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])
        n = self.num_samples
        if self.tumor_fraction is None or tumor.size == 0 or other.size == 0:
            pool = np.concatenate([tumor, other])
            draws = pool[rng.integers(0, pool.size, n)]
        else:
            from_tumor = rng.random(n) < self.tumor_fraction
            draws = np.where(from_tumor, tumor[rng.integers(0, tumor.size, n)], other[rng.integers(0, other.size, n)])
        return iter(int(i) for i in draws)
