"""Synthetic liver tumours: placement inside the liver, contrast, locality, determinism, sizes,
options, file output on the source grid, and the on-the-fly augmentation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from samliver.data.tumor_synthesis import (
    DEFAULT_OPTIONS,
    TumorSynthesisAugment,
    TumorSynthesisError,
    insert_tumors,
    synthesize_tumors,
    synthesize_tumors_files,
    validate_options,
)
from samliver.io import CTVolume, load_ct, load_label

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"
CT_FILE, LIVER_FILE = DATA / "example_ct_sm.nii.gz", DATA / "example_seg_fast" / "liver.nii.gz"
needs_data = pytest.mark.skipif(not CT_FILE.is_file(), reason=f"real test CT not found at {CT_FILE}")


# ---------------------------------------------------------------- helpers


def synthetic_case(spacing=(2.5, 0.8, 0.8), shape=(36, 96, 96), seed=0) -> tuple[CTVolume, np.ndarray]:
    """An ellipsoidal 'liver' (~55 HU, noise SD 12) in soft tissue, with two bright vessel tubes."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.indices(shape).astype(float) - (np.array(shape) / 2)[:, None, None, None]) * np.asarray(spacing)[
        :, None, None, None
    ]
    liver = (z / 40) ** 2 + (y / 33) ** 2 + (x / 33) ** 2 < 1
    hu = np.full(shape, -60.0) + rng.normal(0, 12, shape)
    hu[liver] = 55 + rng.normal(0, 12, liver.sum())
    vessels = liver & (((y - 8) ** 2 + (x + 10) ** 2 < 9) | ((z - 5) ** 2 + (x - 12) ** 2 < 6))
    hu[vessels] += 120
    ct = CTVolume(hu.astype(np.float32), spacing, origin=(1.0, 2.0, 3.0))
    return ct, liver.astype(np.uint8)


def check_locality_and_contrast(before: np.ndarray, after: np.ndarray, mask: np.ndarray, label: np.ndarray,
                                tumors) -> None:
    """Every new tumour voxel and every changed voxel lies in the input liver; voxels > 3 voxels
    from every new tumour are bit-identical; each lesion's median is >= 10 HU from its
    surrounding parenchyma's median (input CT), in the intended direction."""
    new = (label == 2) & (mask != 2)
    assert new.any()
    assert np.all(mask[new] > 0)
    changed = after != before
    assert np.all(mask[changed] > 0)
    far = ndi.distance_transform_edt(~new) > 3
    assert np.array_equal(after[far], before[far])  # bit-identical, float32
    components, count = ndi.label(new, np.ones((3, 3, 3), bool))
    assert count == len(tumors)
    for tumor in tumors:
        lesion = components == components[tumor.center]
        assert components[tumor.center] > 0
        distance = ndi.distance_transform_edt(~lesion)
        shell = (distance >= 4) & (distance <= 8) & (mask == 1) & far
        contrast = float(np.median(after[lesion]) - np.median(before[shell]))
        if tumor.hyperdense:
            assert contrast >= 10, (tumor, contrast)
        else:
            assert contrast <= -10, (tumor, contrast)


@pytest.fixture(scope="module")
def real_case() -> tuple[CTVolume, np.ndarray]:
    ct = load_ct(CT_FILE)
    return ct, load_label(LIVER_FILE, like=ct)


# ---------------------------------------------------------------- synthetic volumes (no shared data)


def test_synthetic_volume_inside_liver_local_and_contrasted():
    ct, liver = synthetic_case()
    for seed in range(4):
        result = insert_tumors(ct.array, liver, ct.spacing, seed, count=(2, 3), hyperdense_probability=0.5)
        assert result.hu.dtype == np.float32 and result.label.dtype == np.uint8
        assert set(np.unique(result.label)) <= {0, 1, 2}
        check_locality_and_contrast(ct.array, result.hu, liver, result.label, result.tumors)
        for tumor in result.tumors:
            assert tumor.vessel_overlap <= 0.5


def test_synthesize_tumors_keeps_geometry_and_existing_tumour():
    ct, liver = synthetic_case()
    mask = liver.copy()
    mask[16:20, 40:46, 40:46] = 2  # an existing lesion inside the liver
    new_ct, label = synthesize_tumors(ct, mask, seed=3, count=2)
    assert new_ct.spacing == ct.spacing and new_ct.origin == ct.origin and new_ct.source is ct.source
    assert np.array_equal(new_ct.direction, ct.direction)
    assert np.all(label[mask == 2] == 2)
    assert np.array_equal(new_ct.array[mask == 2], ct.array[mask == 2])
    assert np.all(label[mask == 0] == 0)
    assert np.array_equal(ct.array, synthetic_case()[0].array)  # input untouched


def test_anisotropic_spacing_gives_round_lesions_in_mm():
    ct, liver = synthetic_case(spacing=(3.0, 0.75, 0.75), shape=(30, 120, 120))
    result = insert_tumors(ct.array, liver, ct.spacing, 1, count=1, diameter_mm=(24, 24), deformation=0.0,
                           vessel_percentile=None)
    (tumor,) = result.tumors
    extent = [np.ptp(idx) * s for idx, s in zip(np.nonzero(result.label == 2), ct.spacing)]
    assert 14 <= min(extent) and max(extent) <= 40  # mm, along every axis, aspect at most ~1.3
    assert 16 <= tumor.equivalent_diameter_mm <= 32


def test_rim_is_brighter_than_the_core():
    ct, liver = synthetic_case(spacing=(1.5, 1.0, 1.0), shape=(50, 80, 80))
    result = insert_tumors(ct.array, liver, ct.spacing, 0, count=1, diameter_mm=(30, 34), rim_probability=1.0,
                           hyperdense_probability=0.0, vessel_percentile=None)
    (tumor,) = result.tumors
    assert tumor.rim and not tumor.hyperdense
    lesion = result.label == 2
    depth = ndi.distance_transform_edt(lesion, sampling=ct.spacing)
    assert np.median(result.hu[lesion & (depth <= 2)]) > np.median(result.hu[lesion & (depth >= 6)]) + 5


def test_options_validation():
    assert validate_options()["count"] == (1, 3)
    with pytest.raises(TumorSynthesisError, match="colour"):
        validate_options(colour=3)
    with pytest.raises(ValueError, match="contrast_hu"):
        validate_options(contrast_hu=(5, 30))  # under 10 HU from the parenchyma
    with pytest.raises(ValueError, match="size_mix"):
        validate_options(size_mix=(0.5, 0.5))
    with pytest.raises(ValueError, match="count"):
        validate_options(count=(3, 1))
    with pytest.raises(ValueError, match="rim_probability"):
        validate_options(rim_probability=1.5)
    with pytest.raises(ValueError, match="edge_blur_mm"):
        validate_options(edge_blur_mm=float("nan"))
    one_class = validate_options(diameter_mm=(5, 8))
    assert one_class["diameter_mm"] == [(5.0, 8.0)] and list(one_class["size_mix"]) == [1.0]
    assert validate_options(vessel_percentile=None)["vessel_percentile"] is None
    ct, liver = synthetic_case()
    with pytest.raises(ValueError, match="unknown"):
        synthesize_tumors(ct, liver, seed=0, radius=3)
    assert set(DEFAULT_OPTIONS) >= {"count", "diameter_mm", "size_mix", "contrast_hu", "boundary_mm"}


def test_empty_liver_and_wrong_shape_raise():
    ct, liver = synthetic_case()
    with pytest.raises(ValueError, match="liver mask is empty"):
        synthesize_tumors(ct, np.zeros_like(liver))
    with pytest.raises(ValueError, match="shape"):
        synthesize_tumors(ct, liver[:-1])


def test_augment_numpy_torch_and_dict():
    ct, liver = synthetic_case()
    hu = ct.array
    never = TumorSynthesisAugment(probability=0.0, seed=0)
    out_hu, out_label = never(hu, liver, spacing=ct.spacing)
    assert out_hu is hu and out_label is liver

    always = TumorSynthesisAugment(probability=1.0, seed=5, count=1)
    a_hu, a_label = always(hu, liver, spacing=ct.spacing)
    assert a_hu.dtype == hu.dtype and a_label.dtype == liver.dtype and (a_label == 2).any()
    again = TumorSynthesisAugment(probability=1.0, seed=5, count=1)(hu, liver, spacing=ct.spacing)
    assert np.array_equal(again[0], a_hu)  # same seed, same stream

    t_hu, t_label = torch.from_numpy(hu)[None], torch.from_numpy(liver.astype(np.int64))[None]
    o_hu, o_label = TumorSynthesisAugment(probability=1.0, seed=5, count=1)(t_hu, t_label, spacing=ct.spacing)
    assert isinstance(o_hu, torch.Tensor) and o_hu.shape == t_hu.shape and o_label.dtype == torch.int64
    assert np.array_equal(o_hu[0].numpy(), a_hu) and np.array_equal(o_label[0].numpy(), a_label)

    data = {"image": t_hu, "label": t_label, "spacing": ct.spacing, "name": "x"}
    out = TumorSynthesisAugment(probability=1.0, seed=5, count=1)(data)
    assert out["name"] == "x" and torch.equal(out["image"], o_hu) and data["image"] is t_hu
    with pytest.raises(ValueError, match="spacing"):
        TumorSynthesisAugment(probability=1.0)({"image": t_hu, "label": t_label})
    no_liver = np.zeros_like(liver)
    assert TumorSynthesisAugment(probability=1.0, seed=0)(hu, no_liver, spacing=ct.spacing)[1] is no_liver
    with pytest.raises(ValueError, match="bogus"):
        TumorSynthesisAugment(bogus=1)


# ---------------------------------------------------------------- the real CT


@needs_data
def test_real_ct_inside_liver_local_and_contrasted(real_case):
    ct, liver = real_case
    for seed in range(6):
        new_ct, label = synthesize_tumors(ct, liver, seed=seed, hyperdense_probability=0.4)
        result = insert_tumors(ct.array, liver, ct.spacing, seed, hyperdense_probability=0.4)
        assert np.array_equal(result.hu, new_ct.array) and np.array_equal(result.label, label)
        check_locality_and_contrast(ct.array, new_ct.array, liver, label, result.tumors)


@needs_data
def test_real_ct_deterministic_by_seed(real_case):
    ct, liver = real_case
    first, label1 = synthesize_tumors(ct, liver, seed=11)
    second, label2 = synthesize_tumors(ct, liver, seed=11)
    other, label3 = synthesize_tumors(ct, liver, seed=12)
    assert np.array_equal(first.array, second.array) and np.array_equal(label1, label2)
    assert not np.array_equal(label1, label3)


@needs_data
def test_real_ct_sizes_vary_from_small_to_large(real_case):
    ct, liver = real_case
    voxel_mm3 = float(np.prod(ct.spacing))
    diameters = []
    for seed in range(12):
        result = insert_tumors(ct.array, liver, ct.spacing, seed)
        components, count = ndi.label(result.label == 2, np.ones((3, 3, 3), bool))
        sizes = np.bincount(components.ravel())[1:]
        diameters += list((6 * sizes * voxel_mm3 / np.pi) ** (1 / 3))
    assert min(diameters) < 10 and max(diameters) > 30, sorted(diameters)  # mm
    assert len({round(d) for d in diameters}) > 8


@needs_data
def test_files_written_on_the_source_grid(tmp_path, real_case):
    ct, liver = real_case
    out = tmp_path / "synth"
    image_path, label_path = synthesize_tumors_files(CT_FILE, LIVER_FILE, out, seed=4, count=2)
    assert sorted(p.name for p in out.iterdir()) == ["image.nii.gz", "label.nii.gz"]  # no temp files
    source = nib.load(str(CT_FILE))
    for path, dtype in ((image_path, np.int16), (label_path, np.uint8)):
        written = nib.load(str(path))
        assert np.array_equal(written.affine, source.affine) and written.shape == source.shape
        assert written.get_data_dtype() == dtype
    new_ct, label = synthesize_tumors(ct, liver, seed=4, count=2)
    assert np.array_equal(load_ct(image_path).array, np.rint(new_ct.array))
    assert np.array_equal(load_label(label_path, like=ct), label)
    unchanged = np.asarray(nib.load(str(image_path)).dataobj) == np.asarray(source.dataobj)
    assert unchanged.mean() > 0.95  # the same file voxel order: only lesion voxels differ
    with pytest.raises(ValueError, match="unknown"):
        synthesize_tumors_files(CT_FILE, LIVER_FILE, tmp_path / "bad", nope=1)
    assert not (tmp_path / "bad").exists()
