"""The bundled samliver_tiny weights and the README's main job, `train_adapter.py --method lora`.

The main job is run exactly as a user runs it (the default lora preset, only the run folder moved
into tmp_path): about two minutes on this machine's CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import samliver
from samliver.data.phantom import PHANTOM_VERSION
from samliver.training import main as train_main

WEIGHTS = Path(samliver.__file__).resolve().parents[1] / "weights"


def test_bundled_tiny_weights_are_recorded_and_load_as_the_bare_base():
    file = WEIGHTS / "samliver_tiny.safetensors"
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert file.stat().st_size < 10 * 2**20  # "a few MB"
    assert (WEIGHTS / "samliver_tiny.safetensors.sha256").read_text().split()[0] == digest
    record = json.loads((WEIGHTS / "samliver_tiny.json").read_text())
    assert record["sha256"] == digest and record["phantom_version"] == PHANTOM_VERSION
    assert record["training_config"]["method"] == "full" and record["training_config"]["checkpoint"] == "random"
    assert record["data"].startswith("phantom:organs")
    model = samliver.load_model("samliver_tiny")
    assert model.checkpoint_sha256 == digest
    assert getattr(model, "adapter", None) is None  # no adapter unless asked


def test_default_main_job_beats_zero_shot_on_held_out_phantoms(tmp_path, capsys):
    run_dir = tmp_path / "lora"
    assert train_main(["--method", "lora", "--output-dir", str(run_dir)]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    config = info["config"]
    assert config["model"] == "samliver_tiny" and config["checkpoint"] is None  # the bundled weights
    test = info["test"]
    assert not set(info["data"]["train"] + info["data"]["val"]) & set(test["cases"])  # held out
    zero, adapted = test["zero_shot"], test["adapted"]
    assert adapted["tumor"] >= zero["tumor"] + 0.05, (zero, adapted)
    assert adapted["liver"] >= zero["liver"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "report.md"):
        assert (run_dir / name).is_file(), name
    adapter_bytes = (run_dir / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < 0.5 * (WEIGHTS / "samliver_tiny.safetensors").stat().st_size
    with capsys.disabled():
        print(f"\nmain job, held-out phantoms: tumour Dice zero-shot {zero['tumor']:.3f} -> adapted "
              f"{adapted['tumor']:.3f}; liver {zero['liver']:.3f} -> {adapted['liver']:.3f}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
