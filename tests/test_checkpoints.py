"""Loading checkpoints: formats, the weights folders, and refusals that name the problem."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

import samliver
from samliver.errors import CheckpointError, WeightsNotFoundError
from tests.conftest import randomize_


@pytest.fixture(scope="module")
def tiny_state():
    return randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=9).sam.state_dict()


def _same_weights(model, state) -> bool:
    return all(torch.equal(model.sam.state_dict()[k], v) for k, v in state.items())


def test_list_models_has_the_zoo():
    assert set(samliver.list_models()) >= {
        "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b", "samliver_tiny"}


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "nested"])
def test_official_state_dict_formats_load(tmp_path, tiny_state, fmt):
    path = tmp_path / f"tiny.{ 'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in tiny_state.items()}, path)
    else:
        torch.save({"model": tiny_state} if fmt == "nested" else tiny_state, path)
    model = samliver.load_model("samliver_tiny", checkpoint=path)
    assert _same_weights(model, tiny_state) and not model.training
    assert len(model.checkpoint_sha256) == 64


def test_weights_folder_lookup_and_missing_file_message(tmp_path, tiny_state, monkeypatch):
    monkeypatch.setenv("SAMLIVER_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFoundError, match=r"sam_vit_b_01ec64\.pth.*samliver weights download sam_vit_b"):
        samliver.load_model("sam_vit_b")
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, tmp_path / "samliver_tiny.safetensors")
    assert _same_weights(samliver.load_model("samliver_tiny"), tiny_state)


def test_wrong_architecture_names_the_first_mismatching_keys(tmp_path):
    vit_b_like = samliver.load_model("sam_vit_b", checkpoint="random").sam.state_dict()
    path = tmp_path / "vit_b.pth"
    torch.save({k: v for k, v in vit_b_like.items() if not k.startswith("image_encoder.blocks.1")}, path)
    with pytest.raises(CheckpointError, match=r"does not fit samliver_tiny.*shape mismatch: image_encoder"):
        samliver.load_model("samliver_tiny", checkpoint=path)
    torch.save({"image_encoder.foo": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: image_encoder.*unexpected keys: image_encoder.foo"):
        samliver.load_model("samliver_tiny", checkpoint=path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_truncated_and_foreign_files_are_refused(tmp_path, tiny_state):
    pickled = tmp_path / "code.pth"
    torch.save({"weights": _Payload()}, pickled)
    with pytest.raises(CheckpointError, match=r"code\.pth: refused to load; the file holds more than tensors"):
        samliver.load_model("samliver_tiny", checkpoint=pickled)
    good = tmp_path / "good.pth"
    torch.save(tiny_state, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable checkpoint"):
        samliver.load_model("samliver_tiny", checkpoint=truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.safetensors: not a readable checkpoint"):
        samliver.load_model("samliver_tiny", checkpoint=text)
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint file not found"):
        samliver.load_model("samliver_tiny", checkpoint=tmp_path / "missing.pth")
    arrays = tmp_path / "arrays.pth"
    torch.save([torch.zeros(2)], arrays)
    with pytest.raises(CheckpointError, match="expected a state dict of tensors, got list"):
        samliver.load_model("samliver_tiny", checkpoint=arrays)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'; known models: .*sam_vit_b"):
        samliver.load_model("sam_vit_x", checkpoint="random")
