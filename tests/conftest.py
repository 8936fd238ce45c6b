"""Shared test fixtures: offline, seeded, random-weight models and the real CT folder."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# CI lays shared/ beside the checkout; so does a developer's workspace.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOTALSEG = SHARED_DATA / "totalseg_example"
needs_shared_data = pytest.mark.skipif(not TOTALSEG.is_dir(), reason=f"{TOTALSEG} is absent")


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter, so zero- or one-initialised parts matter too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the numbers equal those of subprocesses run with OMP_NUM_THREADS=1, and the tiny models' many small ops
    gain little from a second thread but lose a lot when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ct_like_slice(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A synthetic axial slice in HU ``(H, W)``: air, a soft-tissue body, a brighter 'liver' blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    hu = np.full((height, width), -1000.0, np.float32)
    body = ((yy - height / 2) / (0.42 * height)) ** 2 + ((xx - width / 2) / (0.45 * width)) ** 2 < 1
    hu[body] = -80.0
    liver = ((yy - 0.45 * height) / (0.2 * height)) ** 2 + ((xx - 0.35 * width) / (0.18 * width)) ** 2 < 1
    hu[liver] = 60.0
    return hu + rng.normal(0, 15, hu.shape).astype(np.float32)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line for the bad-input corpus (tests/test_bad_inputs.py): how many cases ran and how many passed."""
    outcomes: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid, when = getattr(report, "nodeid", ""), getattr(report, "when", None)  # "deselected" holds items
            if "test_bad_inputs.py::test_bad_input[" not in nodeid or when is None:
                continue
            if when == "call" or report.outcome != "passed":
                if outcomes.get(nodeid, "passed") == "passed":  # a failed setup/teardown outweighs a passed call
                    outcomes[nodeid] = report.outcome
    if outcomes:
        passed = sum(outcome == "passed" for outcome in outcomes.values())
        terminalreporter.write_line(f"bad-input corpus: {len(outcomes)} cases, {passed} passed")
