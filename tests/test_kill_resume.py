"""Killed runs (SIGKILL at a seeded random point) leave only whole files and resume to the same final
state as an uninterrupted run: training (`train_adapter.py`) and evaluation (`samliver evaluate`).

tests/test_training.py kills a training run right after its first checkpoint; here the kill comes at a
random moment after a randomly chosen later checkpoint or case, possibly in the middle of a write, and
everything left behind is checked before resuming.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samliver
from samliver.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
DATA, TEST_DATA = "phantom:tiny?n=4&seed=0", "phantom:tiny?n=2&seed=100"
EVAL_DATA = "phantom:tiny?n=4&seed=200"


pytestmark = pytest.mark.usefixtures("one_thread")


def kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 300) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; fail if it ends first."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill point"
        assert time.time() < deadline, "the kill point never came"
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# ------------------------------------------------------------------ training

TRAIN = {"method": "lora", "checkpoint": "random", "data": DATA, "test_data": TEST_DATA, "max_steps": 6,
         "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3, "checkpoint_every": 2, "eval_at_start": False,
         "augment": False, "log_with": "none", "final_test": False}


def train_flags(out: Path) -> list[str]:
    flags = []
    for key, value in TRAIN.items():
        flags += ["--set", f"{key}={value}"]
    return [*flags, "--output-dir", str(out)]


def assert_whole(run: Path) -> None:
    """Every file a killed training run left under a final name is complete and readable."""
    from safetensors.torch import load_file

    if (run / "run.json").exists():
        json.loads((run / "run.json").read_text())
    for step in (run / "checkpoints").glob("step_*"):
        assert not step.name.endswith(".tmp")
        tensors = load_file(str(step / "model.safetensors"))
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
        for name in ("optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl"):
            torch.load(step / name, map_location="cpu", weights_only=False)
    best = run / "checkpoints" / "best"
    if best.exists():
        load_file(str(best / "adapter_model.safetensors"))
        json.loads((best / "adapter_config.json").read_text())


@pytest.mark.parametrize("seed", [11])
def test_training_killed_at_a_random_point_resumes_to_the_same_weights(tmp_path, seed):
    from accelerate.state import AcceleratorState, GradientState
    from safetensors.torch import load_file

    from samliver.training import resolve
    from samliver.training.loop import train

    rng = random.Random(seed)
    checkpoint_step, delay = rng.choice([2, 4]), rng.uniform(0.0, 0.4)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_adapter.py"), *train_flags(killed)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: (killed / "checkpoints" / f"step_{checkpoint_step:06d}").is_dir(), delay)
    assert not (killed / "adapter_model.safetensors").exists(), "killed after the run finished"
    assert_whole(killed)

    config, _ = resolve(None, {**TRAIN, "output_dir": str(tmp_path / "uninterrupted")})
    try:
        reference = train(config).run_dir
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    resumed = subprocess.run([sys.executable, str(ROOT / "train_adapter.py"), *train_flags(killed), "--resume"],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {killed / 'checkpoints'}" in resumed.stdout
    for name in ("adapter_model.safetensors", "checkpoints/step_000006/model.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(killed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def lines(run: Path) -> list[dict]:
        return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines(reference) == lines(killed)  # loss and validation of every step, none lost or doubled
    final = json.loads((killed / "run.json").read_text())
    assert final["status"] == "finished" and final["steps"] == 6


# ------------------------------------------------------------------ evaluation


def per_case(run: Path) -> list[dict]:
    with open(run / "per_case.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("seed", [5])
def test_evaluation_killed_at_a_random_point_resumes_to_the_same_results(tmp_path, seed):
    from samliver.evaluation import evaluate

    torch.manual_seed(0)
    weights = tmp_path / "tiny.pth"
    torch.save(samliver.load_model("samliver_tiny", checkpoint="random").sam.state_dict(), weights)
    rng = random.Random(seed)
    after_cases, delay = rng.choice([1, 2]), rng.uniform(0.0, 0.3)
    killed = tmp_path / "killed"
    argv = ["evaluate", "--model", "samliver_tiny", "--checkpoint", str(weights), "--data", EVAL_DATA,
            "--prompts", "box,point-1", "--targets", "liver", "--seed", "3", "--no-figures", "-o", str(killed)]
    proc = subprocess.Popen([sys.executable, "-m", "samliver.cli.main", *argv], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: len(list((killed / "cases").glob("*.json"))) >= after_cases, delay)
    assert not (killed / "per_case.csv").exists(), "killed after the run finished"
    done = sorted((killed / "cases").glob("*.json"))
    assert done
    for record in done:  # every result under its final name is whole (a write cut short leaves only a .tmp)
        assert json.loads(record.read_text())["rows"]
        with np.load(record.with_suffix(".npz")) as overlay:
            assert overlay["ct"].ndim == 3
    assert json.loads((killed / "run.json").read_text())["status"] == "running"

    reference = evaluate("samliver_tiny", EVAL_DATA, "box,point-1", tmp_path / "uninterrupted", checkpoint=weights,
                         targets="liver", seed=3, figures=False)
    assert main([*argv, "--resume"]) == 0
    assert per_case(killed) == per_case(reference.run_dir) and len(per_case(killed)) == 4 * 2
    run = json.loads((killed / "run.json").read_text())
    assert run["status"] == "complete" and run["key"] == reference.config["key"]
    assert json.loads((killed / "summary.json").read_text())["summary"] == json.loads(
        (reference.run_dir / "summary.json").read_text())["summary"]
