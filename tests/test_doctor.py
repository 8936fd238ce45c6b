"""``samliver doctor``: a few lines with the true versions, device, weights and caches; exit 0."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import highdicom
import monai
import peft
import pydicom
import pytest
import torch

import samliver
from samliver import weights_store
from samliver.cli import doctor_cmd
from samliver.cli.main import main


def run_doctor(capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["doctor"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


@pytest.fixture
def weights_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$SAMLIVER_WEIGHTS holding one checkpoint file (doctor only looks at names), empty user cache."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / weights_store.manifest_entry("sam_vit_b")["file"]).write_bytes(b"not opened by doctor")
    monkeypatch.setenv("SAMLIVER_WEIGHTS", str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


def test_doctor_reports_versions_device_weights_caches_and_missing(
        weights_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_doctor(capsys)
    text = "\n".join(lines)
    assert len(lines) <= 12, text
    assert lines[0].startswith(f"samliver {samliver.__version__} ") and platform.python_version() in lines[0]
    assert f"torch {torch.__version__}" in lines[1]
    assert ("device cuda" in lines[1]) == torch.cuda.is_available()
    for name, module in (("pydicom", pydicom), ("highdicom", highdicom), ("monai", monai), ("peft", peft)):
        assert f"{name} {module.__version__}" in text

    # weights: the same answer as looking for each manifest file in the search folders
    folders = [weights_env, weights_store.bundled_dir(), weights_env.parent / "cache" / "samliver" / "weights"]
    present = {name: next((f / entry["file"] for f in folders if (f / entry["file"]).is_file()), None)
               for name, entry in weights_store.manifest().items()}
    found = {name: path for name, path in present.items() if path is not None}
    assert found["sam_vit_b"] == weights_env / "sam_vit_b_01ec64.pth"
    (weights_line,) = [line for line in lines if line.startswith("weights:")]
    assert weights_line.startswith(f"weights: {len(found)} of {len(present)} checkpoints present")
    for name, path in found.items():
        assert f"{name} ({path})" in weights_line
    assert f"downloads go to {weights_env} ($SAMLIVER_WEIGHTS = {weights_env})" in text

    # what is missing, listed last: exactly the checkpoints not found, tensorboard, the GPU
    missing = text.split("\nmissing:", 1)[1]
    (checkpoints,) = [line for line in missing.splitlines() if "checkpoints not downloaded" in line]
    assert sorted(checkpoints.split(": ", 1)[1].split(" (")[0].split(", ")) == sorted(set(present) - set(found))
    assert ("tensorboard not installed" in missing) == (importlib.util.find_spec("tensorboard") is None)
    assert ("no GPU" in missing) == (not torch.cuda.is_available())


def test_doctor_names_a_missing_dependency_and_still_exits_0(
        weights_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_cmd, "REQUIRED", (*doctor_cmd.REQUIRED, "samliver-no-such-distribution"))
    text = "\n".join(run_doctor(capsys))
    assert "samliver-no-such-distribution MISSING" in text
    assert "  - samliver-no-such-distribution is not installed" in text


def test_doctor_with_every_checkpoint_present_says_so(
        weights_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for entry in weights_store.manifest().values():
        (weights_env / entry["file"]).touch()
    lines = run_doctor(capsys)
    total = len(weights_store.manifest())
    assert any(line.startswith(f"weights: {total} of {total} checkpoints present") for line in lines)
    assert not any("checkpoints not downloaded" in line for line in lines)
