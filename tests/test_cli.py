"""The ``samliver segment`` command: real CT in, mask on the CT's grid out; one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import samliver
from samliver.cli.main import main
from tests.conftest import TOTALSEG, needs_shared_data, randomize_


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model = randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.sam.state_dict(), path)
    return path


@needs_shared_data
def test_segment_boxes_writes_mask_on_the_ct_grid(tmp_path, tiny_checkpoint, capsys):
    ct_path = TOTALSEG / "example_ct_sm.nii.gz"
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(ct_path), "--model", "samliver_tiny", "--checkpoint", str(tiny_checkpoint),
               "--box", "10,20,30,70,60", "--box", "12,25,35,60,55", "--label", "1", "--label", "2",
               "-o", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    src, written = nib.load(ct_path), nib.load(out)
    np.testing.assert_array_equal(written.affine, src.affine)
    assert written.shape == src.shape and written.get_data_dtype() == np.uint8
    # The file's voxels equal the Python API's result, mapped back to the file's grid.
    ct = samliver.load_ct(ct_path)
    model = samliver.load_model("samliver_tiny", checkpoint=tiny_checkpoint)
    from samliver.prompts import Prompts
    expected = samliver.Predictor(model).segment_volume(
        ct, {10: Prompts(boxes=[[20, 30, 70, 60]]), 12: Prompts(boxes=[[25, 35, 60, 55]], labels=[2])})
    assert expected.any()
    reread = samliver.load_label(out, like=ct)
    np.testing.assert_array_equal(reread, expected)


@needs_shared_data
def test_segment_prompts_file_with_propagation(tmp_path, tiny_checkpoint):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [{"slice": 15, "box": [20, 30, 70, 60], "label": 1}]}))
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(TOTALSEG / "example_ct_sm.nii.gz"), "--model", "samliver_tiny",
               "--checkpoint", str(tiny_checkpoint), "--prompts-file", str(prompts), "--propagate", "-o", str(out)])
    assert rc == 0
    mask = np.asarray(nib.load(out).dataobj)
    assert (mask.reshape(-1, mask.shape[-1]).any(axis=0)).sum() > 1  # more than the key slice


@pytest.mark.parametrize("extra, message", [
    (["--box", "40,20,30,70,60"], "slice 40: outside"),
    (["--box", "3,200,30,270,60"], r"boxes\[0\].*outside the 122x101"),
    (["--box", "3,20,30"], "--box: expected 5 comma-separated numbers"),
    (["--box", "3,20,30,70,60", "--label", "1", "--label", "2"], "--label: give it once or once per --box"),
])
@needs_shared_data
def test_segment_bad_prompts_exit_2_one_line_no_output(tmp_path, capsys, extra, message, tiny_checkpoint):
    out = tmp_path / "mask.nii.gz"
    rc = main(["segment", str(TOTALSEG / "example_ct_sm.nii.gz"), "--model", "samliver_tiny",
               "--checkpoint", str(tiny_checkpoint), "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert list(tmp_path.iterdir()) == []


def test_missing_ct_and_missing_weights_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAMLIVER_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["segment", str(tmp_path / "nope.nii.gz"), "--model", "samliver_tiny",
                 "--box", "1,2,3,4,5", "-o", str(tmp_path / "m.nii.gz")]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err


def test_cli_subprocess_no_traceback_unless_debug(tmp_path):
    # A non-image file named .nii.gz: one line on stderr and exit 2; --debug shows the traceback.
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    args = [sys.executable, "-m", "samliver.cli.main", "segment", str(bad), "--model", "samliver_tiny",
            "--checkpoint", "random", "--box", "0,1,1,4,4", "-o", str(tmp_path / "m.nii.gz")]
    res = subprocess.run(args, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert res.returncode == 2 and "bad.nii.gz" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True)
    assert res.returncode != 0 and "Traceback" in res.stderr
    assert not (tmp_path / "m.nii.gz").exists()
