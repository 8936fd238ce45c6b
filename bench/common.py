"""Shared pieces of the benchmarks: seeded random weights, synchronised timing, interleaved rounds, a table.

Every ratio is measured in one process, the compared runs interleaved round by round (A, B, A, B, ...)
so that a machine whose load drifts (a shared CPU) slows both alike; a ratio is the median of the
per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


def noisy_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Add seeded noise to every parameter (zero-initialised ones such as ``rel_pos`` then matter too)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_((torch.randn(p.shape, generator=gen) * std).to(p.device, p.dtype))
    return module


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[Any, float]:
    """``fn()`` and its wall time in seconds (GPU work included)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int, device: Any = None) -> dict[str, list[float]]:
    """Seconds of each run per round, the runs taking turns within every round."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            seconds[name].append(timed(fn, device)[1])
    return seconds


def ratio(seconds: dict[str, list[float]], ours: str, theirs: str) -> float:
    """Median over rounds of ``ours / theirs``."""
    return statistics.median(a / b for a, b in zip(seconds[ours], seconds[theirs]))


@dataclass
class Row:
    """One line of the result table: a measured figure and, where the issue sets one, its target."""

    bench: str
    figure: str
    value: float
    target: float | None = None      # a ratio at most this
    note: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.value <= self.target


def print_table(rows: list[Row]) -> None:
    print()
    print(f"{'benchmark':28s} {'figure':52s} {'value':>9s}  {'target':>8s}  result")
    for r in rows:
        target = "" if r.target is None else f"<= {r.target:g}"
        verdict = "" if r.ok is None else ("OK" if r.ok else "MISSED")
        print(f"{r.bench:28s} {r.figure:52s} {r.value:9.3f}  {target:>8s}  {verdict} {r.note}".rstrip())
