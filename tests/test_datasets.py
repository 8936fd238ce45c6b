"""Datasets: layout detection and reading (MSD, nnU-Net v2, LiTS, images/labels, phantom), label
mapping, same-grid and path checks, case-level splits, and ``samliver data info``.

Every fixture is a tiny synthetic dataset written here with nibabel: 3 cases of 8×24×24 voxels.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from samliver.cli import data_cmd
from samliver.data.case import Case
from samliver.data.datasets import LABEL_CLASSES, Dataset, label_table, load_dataset
from samliver.data.generated import parse_phantom_spec
from samliver.data.layouts import detect_layout
from samliver.data.splits import apply_split, check_split, load_split, save_split, split_cases
from samliver.errors import DatasetError, SamliverError
from samliver.io import CTVolume
from tests.conftest import TOTALSEG, needs_shared_data

SHAPE_XYZ = (24, 24, 8)  # file order; canonical (Z, Y, X) is (8, 24, 24)
SPACING = (0.8, 0.8, 2.5)


def affine(spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    out = np.diag([*spacing, 1.0])
    out[:3, 3] = origin
    return out


def write_case(image: Path, label: Path | None, seed: int, liver: int = 1, tumour: int = 2,
               label_affine: np.ndarray | None = None, label_shape=SHAPE_XYZ) -> np.ndarray:
    """A CT (air around a soft-tissue body) and a label map with a liver block and a tumour inside.

    Returns the label array as written (file order).
    """
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE_XYZ, -1000, np.int16)
    hu[2:22, 2:22, :] = rng.normal(40, 20, (20, 20, 8)).astype(np.int16)
    image.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine()), image)
    lab = np.zeros(label_shape, np.uint8)
    lab[4:18, 4:18 - seed, 2:6] = liver
    lab[8:11, 8:11, 3:5 + seed % 2] = tumour
    if label is not None:
        label.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(lab, affine() if label_affine is None else label_affine), label)
    return lab


def make_msd(root: Path, labels: dict[str, str] | None = None, liver: int = 1, tumour: int = 2,
             prefix: str = "liver") -> Path:
    labels = labels or {"0": "background", "1": "liver", "2": "cancer"}
    training = []
    for i in range(3):
        write_case(root / "imagesTr" / f"{prefix}_{i}.nii.gz", root / "labelsTr" / f"{prefix}_{i}.nii.gz", i,
                   liver, tumour)
        training.append({"image": f"./imagesTr/{prefix}_{i}.nii.gz", "label": f"./labelsTr/{prefix}_{i}.nii.gz"})
    (root / "imagesTr" / f"._{prefix}_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    meta = {"name": root.name, "modality": {"0": "CT"}, "labels": labels, "numTraining": 3,
            "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def msd(tmp_path) -> Path:
    return make_msd(tmp_path / "Task03_Liver")


@pytest.fixture
def task08(tmp_path) -> Path:
    return make_msd(tmp_path / "Task08_HepaticVessel", {"0": "background", "1": "Vessel", "2": "Tumour"},
                    prefix="hepaticvessel")


@pytest.fixture
def nnunet(tmp_path) -> Path:
    root = tmp_path / "Dataset003_Liver"
    for i in range(3):
        write_case(root / "imagesTr" / f"liver_{i:03d}_0000.nii.gz", root / "labelsTr" / f"liver_{i:03d}.nii.gz", i)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumor": 2},
            "numTraining": 3, "file_ending": ".nii.gz", "name": "Dataset003_Liver"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def lits(tmp_path) -> Path:
    root = tmp_path / "LiTS"
    write_case(root / "Training Batch 1" / "volume-0.nii", root / "Training Batch 1" / "segmentation-0.nii", 0)
    write_case(root / "Training Batch 1" / "volume-10.nii", root / "Training Batch 1" / "segmentation-10.nii", 1)
    write_case(root / "Training Batch 2" / "volume-2.nii.gz", root / "Training Batch 2" / "segmentation-2.nii.gz", 2)
    return root


@pytest.fixture
def plain(tmp_path) -> Path:
    root = tmp_path / "plain"
    for name, seed in (("case_b", 0), ("case_a", 1), ("case_c", 2)):
        write_case(root / "images" / f"{name}.nii.gz", root / "labels" / f"{name}.nii.gz", seed)
    return root


LAYOUT_FIXTURES = {
    "msd": ("msd", ["liver_0", "liver_1", "liver_2"]),
    "nnunet": ("nnunet", ["liver_000", "liver_001", "liver_002"]),
    "lits": ("lits", ["volume-0", "volume-2", "volume-10"]),
    "plain": ("plain", ["case_a", "case_b", "case_c"]),
}


# ---------------------------------------------------------------- detection and reading


@pytest.mark.parametrize("fixture", sorted(LAYOUT_FIXTURES))
def test_layouts_are_detected_and_read(fixture, request):
    root = request.getfixturevalue(fixture)
    layout, names = LAYOUT_FIXTURES[fixture]
    assert detect_layout(root) == layout
    ds = load_dataset(root)
    assert isinstance(ds, Dataset) and ds.layout == layout and ds.root == root
    assert len(ds) == 3 and ds.names == names and ds.has_liver and ds.problems == {}
    for case in ds:
        assert case.image.shape == (8, 24, 24) and case.label.shape == (8, 24, 24)
        assert case.label.dtype == np.uint8 and set(np.unique(case.label)) == {0, 1, 2}
        assert case.image.spacing == pytest.approx((2.5, 0.8, 0.8))
        assert case.image.array.min() == -1000 and case.has_liver
        # the label lies inside the body, voxel-aligned with the CT
        assert case.image.array[case.label > 0].min() > -500


def test_labels_keep_their_voxel_counts(msd):
    case = load_dataset(msd)["liver_1"]
    written = np.asarray(nib.load(msd / "labelsTr" / "liver_1.nii.gz").dataobj)
    assert np.bincount(case.label.ravel(), minlength=3).tolist() == np.bincount(written.ravel(), minlength=3).tolist()
    assert case.meta["source_label_voxels"][2] == int((written == 2).sum())


def test_msd_task08_has_no_liver_vessels_ignored_tumour_kept(task08):
    ds = load_dataset(task08)
    assert ds.layout == "msd" and not ds.has_liver
    assert ds.label_map == {0: 0, 1: 0, 2: 2} and ds.label_names[1] == "Vessel"
    case = ds[0]
    written = np.asarray(nib.load(task08 / "labelsTr" / "hepaticvessel_0.nii.gz").dataobj)
    assert not case.has_liver and set(np.unique(case.label)) == {0, 2}
    assert int((case.label == 2).sum()) == int((written == 2).sum())


def test_label_table_names_are_case_insensitive_and_unknown_names_refused():
    table = label_table({0: "Background", 1: "LIVER", 2: "Liver_Tumors", 3: "hepatic vessels", 4: "lesion"}, "t")
    assert table.mapping == {0: 0, 1: 1, 2: 2, 3: 0, 4: 2} and table.has_liver
    assert set(LABEL_CLASSES) >= {"background", "liver", "cancer", "tumour", "tumor", "lesion", "vessel"}
    with pytest.raises(DatasetError, match="dataset Task07.*'pancreas'"):
        label_table({0: "background", 1: "pancreas"}, "Task07")
    assert label_table({0: "background", 1: "pancreas"}, "t", {"Pancreas": 0}).mapping == {0: 0, 1: 0}


def test_unknown_label_name_in_dataset_json_names_dataset_and_label(tmp_path):
    root = make_msd(tmp_path / "Task07_Pancreas", {"0": "background", "1": "pancreas", "2": "cancer"})
    with pytest.raises(DatasetError, match="Task07_Pancreas.*pancreas"):
        load_dataset(root)
    ds = load_dataset(root, label_names={"pancreas": 0})
    assert not ds.has_liver and set(np.unique(ds[0].label)) == {0, 2}


def test_nnunet_region_labels_take_the_smallest_region(tmp_path, nnunet):
    meta = json.loads((nnunet / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": [1, 2], "tumor": 2}
    meta["regions_class_order"] = [1, 2]
    (nnunet / "dataset.json").write_text(json.dumps(meta))
    ds = load_dataset(nnunet)
    assert ds.label_map == {0: 0, 1: 1, 2: 2} and ds.label_names == {0: "background", 1: "liver", 2: "tumor"}


def test_dataset_indexing_slicing_subset_and_laziness(msd):
    ds = load_dataset(msd)
    assert ds[-1].name == "liver_2" and ds["liver_1"].name == "liver_1"
    assert "liver_0" in ds and "liver_9" not in ds
    with pytest.raises(KeyError, match="liver_9"):
        ds["liver_9"]
    with pytest.raises(IndexError):
        ds[3]
    assert ds[1:].names == ["liver_1", "liver_2"] and isinstance(ds[1:], Dataset)
    sub = ds.subset(["liver_2", "liver_0"])
    assert sub.names == ["liver_2", "liver_0"] and sub.layout == "msd" and sub[0].name == "liver_2"
    with pytest.raises(DatasetError, match="liver_7"):
        ds.subset(["liver_0", "liver_7"])
    # cases are read when accessed: a file broken after listing fails only that case
    (msd / "imagesTr" / "liver_2.nii.gz").write_bytes(b"not a nifti")
    assert ds[0].name == "liver_0"
    with pytest.raises(DatasetError, match="liver_2"):
        ds["liver_2"]


def test_spec_may_name_the_dataset_json_and_force_a_layout(msd, plain):
    assert load_dataset(msd / "dataset.json").names == ["liver_0", "liver_1", "liver_2"]
    assert load_dataset(str(plain), layout="plain").layout == "plain"
    with pytest.raises(DatasetError, match="unknown layout"):
        load_dataset(plain, layout="kaggle")


def test_label_stored_in_another_voxel_order_is_accepted_and_aligned(plain):
    before = load_dataset(plain)["case_a"].label
    # the same world voxels, stored with the first file axis reversed (and the origin moved to match)
    path = plain / "labels" / "case_a.nii.gz"
    lab = np.asarray(nib.load(path).dataobj)
    flip = np.array([[-1, 0, 0, SHAPE_XYZ[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(lab[::-1].copy(), affine() @ flip), path)
    np.testing.assert_array_equal(load_dataset(plain)["case_a"].label, before)


@needs_shared_data
def test_real_ct_in_an_msd_folder(tmp_path):
    root = tmp_path / "Task00_TotalSegExample"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(TOTALSEG / "example_ct_sm.nii.gz", root / "imagesTr" / "example.nii.gz")
    shutil.copy(TOTALSEG / "example_seg_fast" / "liver.nii.gz", root / "labelsTr" / "example.nii.gz")
    shutil.copy(TOTALSEG / "example_ct_sm.nii.gz", root / "imagesTr" / "wrong_grid.nii.gz")
    shutil.copy(TOTALSEG / "example_seg" / "liver.nii.gz", root / "labelsTr" / "wrong_grid.nii.gz")
    training = [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("example", "wrong_grid")]
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "training": training}))
    ds = load_dataset(root)
    case = ds["example"]
    assert case.image.shape == (30, 101, 122) and int(case.label.sum()) == 39_350 and ds.has_liver
    assert 30 < float(np.median(case.image.array[case.label == 1])) < 60  # liver HU
    with pytest.raises(DatasetError, match=r"case wrong_grid: .*\(30, 101, 122\).*\(112, 101, 122\)"):
        ds["wrong_grid"]


# ---------------------------------------------------------------- bad input


def test_missing_label_file_names_the_case(msd):
    (msd / "labelsTr" / "liver_1.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case liver_1: label file labelsTr/liver_1.nii.gz is missing"):
        load_dataset(msd)
    ds = load_dataset(msd, strict=False)
    assert list(ds.problems) == ["liver_1"] and ds[0].name == "liver_0"
    with pytest.raises(DatasetError, match="liver_1"):
        ds["liver_1"]


@pytest.mark.parametrize("layout", ["lits", "plain", "nnunet"])
def test_missing_label_file_in_scanned_layouts(layout, request):
    root = request.getfixturevalue(layout)
    victim = {"lits": root / "Training Batch 2" / "segmentation-2.nii.gz",
              "plain": root / "labels" / "case_c.nii.gz",
              "nnunet": root / "labelsTr" / "liver_001.nii.gz"}[layout]
    name = {"lits": "volume-2", "plain": "case_c", "nnunet": "liver_001"}[layout]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"case {name}: label file .* is missing"):
        load_dataset(root)


def test_label_without_image_is_a_problem(plain, lits):
    write_case(plain / "spare" / "x.nii.gz", plain / "labels" / "case_z.nii.gz", 0)
    with pytest.raises(DatasetError, match="case case_z: no image file"):
        load_dataset(plain)
    (lits / "Training Batch 1" / "volume-10.nii").unlink()
    with pytest.raises(DatasetError, match="case volume-10: no image file"):
        load_dataset(lits)


def test_label_on_another_grid_names_case_and_both_geometries(msd):
    write_case(msd / "imagesTr" / "liver_1.nii.gz", msd / "labelsTr" / "liver_1.nii.gz", 1,
               label_affine=affine(spacing=(0.8, 0.8, 3.0)))
    ds = load_dataset(msd)
    with pytest.raises(DatasetError, match=r"case liver_1: label liver_1.nii.gz is not on the image's grid: "
                                           r"image shape .*spacing \(z,y,x\) mm \(2.5, .*label shape .*\(3, 0.8, 0.8\)"):
        ds["liver_1"]


def test_label_of_another_shape_names_the_case(plain):
    write_case(plain / "images" / "case_b.nii.gz", plain / "labels" / "case_b.nii.gz", 0, label_shape=(24, 24, 7))
    with pytest.raises(DatasetError, match=r"case case_b: .*shape \(Z,Y,X\) \(8, 24, 24\).*\(7, 24, 24\)"):
        load_dataset(plain)["case_b"]


def test_undeclared_label_values_name_case_and_values(msd, lits):
    write_case(msd / "imagesTr" / "liver_2.nii.gz", msd / "labelsTr" / "liver_2.nii.gz", 2, tumour=3)
    with pytest.raises(DatasetError, match=r"case liver_2: label values \[3\] are not declared"):
        load_dataset(msd)["liver_2"]
    write_case(lits / "Training Batch 1" / "volume-0.nii", lits / "Training Batch 1" / "segmentation-0.nii", 0, liver=7)
    with pytest.raises(DatasetError, match=r"case volume-0: label values \[7\]"):
        load_dataset(lits)["volume-0"]


@pytest.mark.parametrize("entry, what", [
    ("../outside/liver_9.nii.gz", r"training\[0\].image '../outside/liver_9.nii.gz' points outside"),
    ("./imagesTr/../../outside/liver_9.nii.gz", r"training\[0\].image .* points outside"),
    ("/etc/passwd", r"training\[0\].image '/etc/passwd' is an absolute path"),
    ("C:\\data\\liver_9.nii.gz", r"training\[0\].image .* is an absolute path"),
])
def test_dataset_json_entries_outside_the_folder_are_refused(msd, entry, what):
    meta = json.loads((msd / "dataset.json").read_text())
    meta["training"][0]["image"] = entry
    (msd / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=what):
        load_dataset(msd)


def test_dataset_json_symlink_resolving_outside_is_refused(msd, tmp_path):
    outside = tmp_path / "elsewhere" / "secret.nii.gz"
    write_case(outside, None, 0)
    link = msd / "labelsTr" / "liver_0.nii.gz"
    link.unlink()
    try:
        link.symlink_to(outside)
    except OSError:
        pytest.skip("this file system cannot make symlinks")
    with pytest.raises(DatasetError, match=r"training\[0\].label './labelsTr/liver_0.nii.gz' resolves outside"):
        load_dataset(msd)


def test_nnunet_dataset_table_paths_are_checked_too(nnunet):
    meta = json.loads((nnunet / "dataset.json").read_text())
    meta["dataset"] = {"liver_000": {"images": ["imagesTr/liver_000_0000.nii.gz"], "label": "../liver_000.nii.gz"}}
    (nnunet / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"dataset\['liver_000'\].label"):
        load_dataset(nnunet)
    meta["dataset"]["liver_000"]["label"] = "labelsTr/liver_000.nii.gz"
    (nnunet / "dataset.json").write_text(json.dumps(meta))
    assert load_dataset(nnunet).names == ["liver_000"]


def test_empty_missing_and_unrecognised_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty.*the folder is empty"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="nowhere: no such dataset folder"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="notes: no recognised dataset layout"):
        load_dataset(tmp_path / "notes")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset.json: cannot read"):
        load_dataset(tmp_path / "badjson")


def test_dataset_error_is_a_samliver_value_error():
    assert issubclass(DatasetError, SamliverError) and issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- splits


def test_split_by_case_is_deterministic_disjoint_and_order_independent():
    names = [f"liver_{i}" for i in range(40)]
    split = split_cases(names, (0.7, 0.15, 0.15), seed=3)
    assert [len(split[k]) for k in ("train", "val", "test")] == [28, 6, 6]
    assert sorted(sum(split.values(), [])) == sorted(names)
    check_split(split, names)  # no overlap
    assert split_cases(list(reversed(names)), (0.7, 0.15, 0.15), seed=3) == split
    assert split_cases(names, seed=4) != split
    # small datasets still give each part a case
    assert [len(v) for v in split_cases(["a", "b", "c"]).values()] == [1, 1, 1]
    assert list(split_cases(names, {"train": 0.8, "val": 0.2})) == ["train", "val"]
    with pytest.raises(DatasetError, match="sum to 1"):
        split_cases(names, (0.5, 0.2, 0.2))
    with pytest.raises(DatasetError, match="twice: a"):
        split_cases(["a", "b", "a"])


@settings(max_examples=40, deadline=None)
@given(st.sets(st.text("abc_0123456789", min_size=1, max_size=8), min_size=1, max_size=60),
       st.integers(0, 2**31), st.randoms(use_true_random=False))
def test_split_property_partition_and_stable_under_reordering(names, seed, random):
    names = sorted(names)
    split = split_cases(names, seed=seed)
    assert sorted(sum(split.values(), [])) == names
    check_split(split, names)
    random.shuffle(names)
    assert split_cases(names, seed=seed) == split


def test_split_files_json_yaml_and_folds(tmp_path, msd):
    ds = load_dataset(msd)
    split = {"train": ["liver_0", "liver_2"], "val": ["liver_1"], "test": []}
    for suffix in (".json", ".yaml"):
        path = save_split(split, tmp_path / f"split{suffix}")
        assert load_split(path, ds.names) == split
    parts = apply_split(ds, load_split(tmp_path / "split.yaml", ds.names))
    assert parts["train"].names == ["liver_0", "liver_2"] and parts["val"][0].name == "liver_1"

    folds = tmp_path / "splits_final.json"
    folds.write_text(json.dumps([{"train": ["liver_0"], "val": ["liver_1"]}, {"train": ["liver_1"], "val": ["liver_0"]}]))
    assert load_split(folds, fold=1) == {"train": ["liver_1"], "val": ["liver_0"]}
    with pytest.raises(DatasetError, match="2 folds"):
        load_split(folds)

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": ["liver_0", "liver_9"], "val": ["liver_1"]}))
    with pytest.raises(DatasetError, match="bad.yaml: cases not in the dataset: liver_9"):
        load_split(bad, ds.names)
    bad.write_text(yaml.safe_dump({"train": ["liver_0", "liver_1"], "test": ["liver_1"]}, sort_keys=False))
    with pytest.raises(DatasetError, match="case liver_1 is listed in both 'train' and 'test'"):
        load_split(bad, ds.names)
    bad.write_text(yaml.safe_dump({"training": ["liver_0"]}))
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        load_split(bad)


# ---------------------------------------------------------------- phantom


def test_phantom_spec_parsing():
    assert parse_phantom_spec("phantom") == ("liver-tumor", None, 0)
    assert parse_phantom_spec("phantom:liver-only?n=4&seed=7") == ("liver-only", 4, 7)
    assert parse_phantom_spec("phantom:liver-tumor", n=3, seed=2) == ("liver-tumor", 3, 2)
    with pytest.raises(DatasetError, match="unknown phantom option 'size'"):
        parse_phantom_spec("phantom?size=3")
    with pytest.raises(DatasetError, match="n=4 in the spec but n=5"):
        parse_phantom_spec("phantom?n=4", n=5)
    with pytest.raises(DatasetError, match="at least 1"):
        parse_phantom_spec("phantom?n=0")


def test_phantom_dataset_wiring_with_a_stand_in_generator(monkeypatch):
    """load_dataset's phantom plumbing, against a stand-in for samliver.data.phantom."""
    calls = []

    def make_phantom(seed: int, preset: str = "liver-tumor") -> Case:
        calls.append((seed, preset))
        label = np.zeros((2, 4, 4), np.uint8)
        label[:, 1:3, 1:3] = 2 if preset == "tumor-only" else 1
        return Case(f"made-{seed}", CTVolume(np.full((2, 4, 4), float(seed)), (2.0, 1.0, 1.0)), label,
                    meta={"generator": "stand-in"})

    fake = types.ModuleType("samliver.data.phantom")
    fake.make_phantom = make_phantom
    fake.list_phantom_presets = lambda: ["liver-tumor", "tumor-only"]
    monkeypatch.setitem(sys.modules, "samliver.data.phantom", fake)

    ds = load_dataset("phantom?n=3")
    assert ds.names == ["phantom-liver-tumor-0000", "phantom-liver-tumor-0001", "phantom-liver-tumor-0002"]
    assert ds.layout == "phantom" and ds.has_liver and not calls
    case = ds[2]
    assert calls == [(2, "liver-tumor")] and case.name == "phantom-liver-tumor-0002" and case.image.array[0, 0, 0] == 2
    assert case.meta["generator"] == "stand-in" and case.meta["seed"] == 2
    assert len(load_dataset("phantom")) == 8
    other = load_dataset("phantom:tumor-only?seed=10", n=2)
    assert other.names == ["phantom-tumor-only-0010", "phantom-tumor-only-0011"]
    assert other.subset(["phantom-tumor-only-0011"])[0].label.max() == 2
    with pytest.raises(DatasetError, match="unknown phantom preset 'kidney'; presets: liver-tumor, tumor-only"):
        load_dataset("phantom:kidney")
    with pytest.raises(DatasetError, match="only to phantom"):
        load_dataset("some/folder", n=3)


def _has_make_phantom() -> bool:
    try:
        return hasattr(importlib.import_module("samliver.data.phantom"), "make_phantom")
    except ImportError:
        return False


@pytest.mark.skipif(not _has_make_phantom(), reason="samliver.data.phantom.make_phantom is not written yet")
def test_phantom_dataset_generates_cases_lazily_and_reproducibly(capsys):
    ds = load_dataset("phantom:tiny?n=2&seed=5")
    assert ds.layout == "phantom" and ds.root is None and ds.has_liver
    assert ds.names == ["phantom-tiny-0005", "phantom-tiny-0006"]
    first, again = ds[0], load_dataset("phantom:tiny", n=2, seed=5)["phantom-tiny-0005"]
    assert first.name == "phantom-tiny-0005" and first.label.shape == first.image.shape
    np.testing.assert_array_equal(first.label, again.label)
    np.testing.assert_array_equal(first.image.array, again.image.array)
    assert set(np.unique(first.label)) <= {0, 1, 2} and (first.label == 1).any()
    assert run_cli(["data", "info", "phantom:tiny?n=1", "--sample", "1000"]) == 0
    assert "layout    phantom" in capsys.readouterr().out


# ---------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="samliver")
    data_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_data_info_summarises_a_good_dataset(task08, capsys):
    assert run_cli(["data", "info", str(task08), "--sample", "500"]) == 0
    out = capsys.readouterr().out
    assert "layout    msd" in out and "cases     3" in out
    assert "1 Vessel -> 0 (ignored)" in out and "2 Tumour -> 2" in out
    assert "has_liver no (tumour targets only)" in out
    assert "hepaticvessel_1  8x24x24" in out and "2.5x0.8x0.8" in out
    assert "summary over 3 readable case(s)" in out and "HU       min -1000" in out
    assert "with liver 0/3, with tumour 3/3" in out and "problems  none" in out


def test_cli_data_info_lists_every_bad_case_and_exits_1(msd, capsys):
    (msd / "labelsTr" / "liver_0.nii.gz").unlink()
    write_case(msd / "imagesTr" / "liver_2.nii.gz", msd / "labelsTr" / "liver_2.nii.gz", 2, tumour=5)
    assert run_cli(["data", "info", str(msd)]) == 1
    out = capsys.readouterr().out
    assert "problems  2" in out and "summary over 1 readable case(s)" in out
    assert "liver_0: dataset" in out and "label file labelsTr/liver_0.nii.gz is missing" in out
    assert "liver_2: dataset" in out and "label values [5]" in out
    assert "liver_1  8x24x24" in out


def test_cli_data_info_on_an_empty_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="the folder is empty"):
        run_cli(["data", "info", str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        run_cli(["data"])  # a sub-command is required


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths in the expected message")
def test_cli_help_mentions_phantom_specs(capsys):
    with pytest.raises(SystemExit):
        run_cli(["data", "info", "--help"])
    assert "phantom:liver-tumor" in capsys.readouterr().out
