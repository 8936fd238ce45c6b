"""``samliver synth phantom|tumors`` write datasets that the rest of samliver reads."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from samliver.cli.main import main
from samliver.data import load_dataset, make_phantom
from tests.conftest import TOTALSEG, needs_shared_data


def test_synth_phantom_writes_a_plain_dataset_that_loads_back(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["synth", "phantom", "--n", "2", "--preset", "tiny", "--seed", "5", "-o", str(out)]) == 0
    ds = load_dataset(out)
    assert ds.layout == "plain" and len(ds) == 2
    for i, case in enumerate(ds):
        ref = make_phantom(5 + i, preset="tiny")
        assert case.name == ref.name
        np.testing.assert_array_equal(case.label, ref.label)
        np.testing.assert_array_equal(case.image.array, np.clip(np.rint(ref.image.array), -32768, 32767))
        np.testing.assert_allclose(case.image.spacing, ref.image.spacing, rtol=1e-6)
    assert json.loads((out / "phantom.json").read_text())["seeds"] == [5, 6]


def test_synth_phantom_bad_preset_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["synth", "phantom", "--n", "2", "--preset", "nope", "-o", str(out)]) == 2
    assert "unknown phantom preset 'nope'" in capsys.readouterr().err
    assert not out.exists()


@needs_shared_data
def test_synth_tumors_cli_writes_image_and_label_on_the_ct_grid(tmp_path):
    ct = TOTALSEG / "example_ct_sm.nii.gz"
    out = tmp_path / "syn"
    assert main(["synth", "tumors", str(ct), str(TOTALSEG / "example_seg_fast" / "liver.nii.gz"),
                 "--count", "2,2", "--seed", "3", "-o", str(out)]) == 0
    image, label = nib.load(out / "image.nii.gz"), nib.load(out / "label.nii.gz")
    np.testing.assert_array_equal(image.affine, nib.load(ct).affine)
    np.testing.assert_array_equal(label.affine, nib.load(ct).affine)
    assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2}
