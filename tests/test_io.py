"""CT / label I/O: canonical orientation, masks written back on the source grid, errors."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

import samliver.io.save as save_module
from samliver.errors import CTReadError, MaskWriteError
from samliver.io import CTVolume, load_ct, load_label, save_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg_example"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real test CT not found at {DATA}")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# ---------------------------------------------------------------- helpers


def canonical_image(seed: int = 0) -> tuple[np.ndarray, sitk.Image]:
    """A small random (Z, Y, X) int16 volume as a canonical (identity-direction) SimpleITK image."""
    array = np.random.default_rng(seed).integers(-1000, 1000, size=(5, 6, 7), dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.75, 0.9, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    return array, image


def write_nibabel(image: sitk.Image, path: Path) -> Path:
    """Write ``image`` with nibabel, sform only (code 2) like the TotalSegmentator files."""
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    out = nib.Nifti1Image(data, None)
    out.set_sform(LPS_TO_RAS @ lps, code=2)
    out.set_qform(None, code=0)
    nib.save(out, path)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- orientation on synthetic data

ORIENTATIONS = ["LPS", "RAS", "LAS", "RPI", "PIL", "SRA", "ASL", "IRP"]


@pytest.mark.parametrize("writer", ["sitk", "nibabel"])
@pytest.mark.parametrize("code", ORIENTATIONS)
def test_any_stored_orientation_loads_to_the_same_canonical_array(tmp_path: Path, code: str, writer: str) -> None:
    array, image = canonical_image()
    stored = sitk.DICOMOrient(image, code)
    path = tmp_path / f"{code}.nii.gz"
    if writer == "sitk":
        sitk.WriteImage(stored, str(path))
    else:
        write_nibabel(stored, path)

    ct = load_ct(path)
    assert ct.array.dtype == np.float32 and ct.shape == (5, 6, 7)
    np.testing.assert_array_equal(ct.array, array)
    np.testing.assert_allclose(ct.spacing, (2.5, 0.9, 0.75), atol=1e-6)
    np.testing.assert_allclose(ct.origin, (10.0, -20.0, 30.0), atol=1e-4)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-6)
    assert ct.slice_spacing_yx == pytest.approx((0.9, 0.75))

    # the mask goes back in the source file's own voxel order, with the source's header geometry
    mask = (array.astype(np.int64) % 7).astype(np.uint8)
    out = save_mask(mask, ct, tmp_path / f"mask_{code}.nii.gz")
    src, written = nib.load(path), nib.load(out)
    np.testing.assert_array_equal(written.affine, src.affine)
    assert int(written.header["qform_code"]) == int(src.header["qform_code"])
    assert int(written.header["sform_code"]) == int(src.header["sform_code"])
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(src.dataobj).astype(np.int64) % 7)
    back = sitk.DICOMOrient(sitk.ReadImage(str(out)), "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)


@pytest.mark.parametrize("angle", [0.15, 0.5])
def test_oblique_grid_matches_simpleitk_dicomorient(tmp_path: Path, angle: float) -> None:
    array, image = canonical_image(1)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]])
    image.SetDirection(rotation.ravel().tolist())
    path = tmp_path / "oblique.nii"
    sitk.WriteImage(image, str(path))

    ct = load_ct(path)
    reference = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(ct.spacing[::-1], reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(ct.origin, reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ct.direction.ravel(), reference.GetDirection(), atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    perm=st.permutations([0, 1, 2]),
    signs=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    spacing=st.tuples(*[st.sampled_from([0.5, 0.8, 1.0, 2.5, 5.0])] * 3),
    shape=st.tuples(*[st.integers(1, 5)] * 3),
    origin=st.tuples(*[st.integers(-300, 300)] * 3),
    seed=st.integers(0, 2**16),
    gz=st.booleans(),
)
def test_flips_permutations_and_spacings_round_trip_exactly(perm, signs, spacing, shape, origin, seed, gz) -> None:
    data = np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)
    affine = np.eye(4)
    for axis in range(3):  # file axis `axis` runs along RAS world axis perm[axis]
        affine[:3, axis] = 0.0
        affine[perm[axis], axis] = signs[axis] * spacing[axis]
    affine[:3, 3] = origin
    suffix = ".nii.gz" if gz else ".nii"
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / f"src{suffix}"
        nib.save(nib.Nifti1Image(data, affine), src)
        ct = load_ct(src)

        # independent check: every file voxel lands where its world position says it should
        ijk = np.indices(shape).reshape(3, -1)
        lps = (LPS_TO_RAS @ affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
        xyz = np.rint((lps - np.asarray(ct.origin)[:, None]) / np.asarray(ct.spacing[::-1])[:, None]).astype(int)
        np.testing.assert_array_equal(ct.array[xyz[2], xyz[1], xyz[0]], data.reshape(-1))
        np.testing.assert_allclose(ct.direction, np.eye(3))

        out = save_mask(ct.array.astype(np.uint8), ct, Path(folder) / f"mask{suffix}")
        written = nib.load(out)
        np.testing.assert_array_equal(written.affine, nib.load(src).affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj), data)
        np.testing.assert_array_equal(load_label(out, like=ct), ct.array.astype(np.uint8))


def test_four_d_with_trailing_singleton_is_read_as_3d(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    path = tmp_path / "single_volume.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    ct = load_ct(path)
    assert ct.shape == (6, 5, 4)
    out = save_mask(np.ones(ct.shape, np.uint8), ct, tmp_path / "mask.nii")
    assert nib.load(out).shape == (4, 5, 6)


def test_in_memory_volume_saves_on_its_canonical_grid(tmp_path: Path) -> None:
    ct = CTVolume(np.zeros((3, 4, 5)), spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0))
    mask = np.zeros(ct.shape, np.uint8)
    mask[1, 2, 3] = 2
    out = save_mask(mask, ct, tmp_path / "mask.nii.gz")
    back = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    np.testing.assert_allclose(back.GetSpacing(), (0.5, 1.0, 2.0))
    np.testing.assert_allclose(back.GetOrigin(), (1.0, 2.0, 3.0), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), np.eye(3).ravel(), atol=1e-6)


def test_ctvolume_validates_and_helpers() -> None:
    with pytest.raises(ValueError, match="Z, Y, X"):
        CTVolume(np.zeros((4, 4)), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        CTVolume(np.zeros((2, 3, 4)), spacing=(1, 0, 1))
    ct = CTVolume(np.zeros((2, 3, 4), np.int16), spacing=(3, 2, 1))
    assert ct.array.dtype == np.float32 and ct.shape == (2, 3, 4) and ct.slice_spacing_yx == (2.0, 1.0)


def test_importing_io_does_not_import_image_libraries() -> None:
    code = (
        "import sys, samliver.io; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('SimpleITK', 'nibabel', 'pydicom')]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


# ---------------------------------------------------------------- bad input


def _small_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _bad_files(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {}
    files["missing"] = tmp / "missing_ct.nii.gz"
    files["not_an_image"] = tmp / "notes.nii.gz"
    files["not_an_image"].write_bytes(b"this is not an image\n")
    files["gzip_of_text"] = tmp / "text_in_gzip.nii.gz"
    files["gzip_of_text"].write_bytes(gzip.compress(b"hello " * 100))
    full = _small_nifti(tmp / "full.nii.gz", rng.integers(-1000, 1000, size=(20, 20, 20)).astype(np.int16))
    files["truncated"] = tmp / "truncated.nii.gz"
    files["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    files["2d"] = _small_nifti(tmp / "flat2d.nii.gz", np.zeros((8, 8), np.int16))
    files["4d"] = _small_nifti(tmp / "four_d.nii.gz", np.zeros((4, 4, 4, 3), np.int16))
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    files["nan"] = _small_nifti(tmp / "with_nan.nii", nan)
    inf = np.zeros((4, 4, 4), np.float32)
    inf[0, 0, 0] = np.inf
    files["inf"] = _small_nifti(tmp / "with_inf.nii.gz", inf)
    files["empty_folder"] = tmp / "empty_dicom_dir"
    files["empty_folder"].mkdir()
    files["no_dicom_folder"] = tmp / "not_dicom_dir"
    files["no_dicom_folder"].mkdir()
    (files["no_dicom_folder"] / "readme.txt").write_text("no images here")
    files["suffix"] = tmp / "volume.mha"
    files["suffix"].write_bytes(b"\0" * 16)
    return files


BAD_CASES = {
    "missing": "no such file",
    "not_an_image": "not a readable NIfTI",
    "gzip_of_text": "not a readable NIfTI",
    "truncated": "cannot read the voxel data",
    "2d": "2D image",
    "4d": "4D image",
    "nan": "NaN or infinite",
    "inf": "NaN or infinite",
    "empty_folder": "no DICOM files",
    "no_dicom_folder": "no DICOM files",
    "suffix": "unsupported file type",
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path: Path, case: str) -> None:
    path = _bad_files(tmp_path)[case]
    with pytest.raises(CTReadError, match=path.name) as info:
        load_ct(path)
    assert BAD_CASES[case] in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_series_uid_is_refused_for_nifti(tmp_path: Path) -> None:
    path = _small_nifti(tmp_path / "ct.nii", np.zeros((3, 3, 3), np.int16))
    with pytest.raises(CTReadError, match="ct.nii.*DICOM"):
        load_ct(path, series_uid="1.2.3")


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.full((3, 3, 3), 0.5), "non-integer"), (np.full((3, 3, 3), 300), "0..255"), (np.full((3, 3, 3), -1), "0..255")],
)
def test_load_label_refuses_non_label_values(tmp_path: Path, values: np.ndarray, message: str) -> None:
    path = _small_nifti(tmp_path / "labels.nii.gz", values.astype(np.float32 if values.dtype.kind == "f" else np.int16))
    with pytest.raises(CTReadError, match=f"labels.nii.gz.*{message}"):
        load_label(path)


def test_load_label_refuses_another_grid(tmp_path: Path) -> None:
    ct = load_ct(_small_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 5, 6), np.int16)))
    shifted_affine = np.eye(4)
    shifted_affine[2, 3] = 0.5  # half a voxel along z
    shifted = nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), shifted_affine)
    nib.save(shifted, tmp_path / "shifted.nii.gz")
    with pytest.raises(CTReadError, match="shifted.nii.gz.*origin"):
        load_label(tmp_path / "shifted.nii.gz", like=ct)
    _small_nifti(tmp_path / "small.nii.gz", np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(CTReadError, match="small.nii.gz.*shape"):
        load_label(tmp_path / "small.nii.gz", like=ct)
    _small_nifti(tmp_path / "same.nii.gz", np.ones((4, 5, 6), np.uint8))
    assert load_label(tmp_path / "same.nii.gz", like=ct).sum() == 120


@pytest.mark.parametrize(
    ("mask", "name", "message"),
    [
        (np.zeros((4, 5, 5), np.uint8), "m.nii.gz", r"\(4, 5, 5\).*\(6, 5, 4\)"),
        (np.zeros((5, 6, 4), np.uint8), "m.nii.gz", r"\(5, 6, 4\).*\(6, 5, 4\)"),  # same size, axes swapped
        (np.full((6, 5, 4), 0.5), "m.nii.gz", "non-integer"),
        (np.full((6, 5, 4), 256), "m.nii.gz", "0..255"),
        (np.full((6, 5, 4), -1), "m.nii", "0..255"),
        (np.zeros((6, 5, 4), np.uint8), "m.dcm", "DICOM SEG output needs a CT read from a DICOM series"),
        (np.zeros((6, 5, 4), np.uint8), "m.mha", "unsupported"),
        (np.zeros((6, 5, 4), np.uint8), "missing_dir/m.nii.gz", "does not exist"),
        (np.zeros((6, 5, 4), np.uint8), "ct.nii.gz", "overwrite"),
    ],
)
def test_save_mask_failures_leave_nothing_behind(tmp_path: Path, mask: np.ndarray, name: str, message: str) -> None:
    ct = load_ct(_small_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 5, 6), np.int16)))
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=message):
        save_mask(mask, ct, tmp_path / name)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("broken", ["replace", "fsync"])
def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    ct = load_ct(_small_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 5, 6), np.int16)))
    before = listing(tmp_path)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(save_module.os, broken, fail)
    with pytest.raises(MaskWriteError, match="mask.nii.gz.*No space"):
        save_mask(np.zeros(ct.shape, np.uint8), ct, tmp_path / "mask.nii.gz")
    assert listing(tmp_path) == before


def test_save_mask_overwrites_atomically_and_keeps_permissions(tmp_path: Path) -> None:
    ct = load_ct(_small_nifti(tmp_path / "ct.nii.gz", np.zeros((4, 5, 6), np.int16)))
    out = tmp_path / "mask.nii.gz"
    save_mask(np.zeros(ct.shape, bool), ct, out)
    save_mask(np.ones(ct.shape, np.int64), ct, out)
    assert np.asarray(nib.load(out).dataobj).sum() == 120
    assert listing(tmp_path) == ["ct.nii.gz", "mask.nii.gz"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- real CT (NIfTI)


@needs_data
def test_real_nifti_ct_loads_canonical() -> None:
    path = DATA / "example_ct_sm.nii.gz"
    ct = load_ct(path)
    assert ct.shape == (30, 101, 122)  # nibabel (122, 101, 30) RAS → (Z, Y, X) LPS
    assert ct.spacing == (3.0, 3.0, 3.0)
    assert ct.array.min() == -1100 and ct.array.max() == 1207
    np.testing.assert_allclose(ct.direction, np.eye(3))
    reference = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(ct.origin, reference.GetOrigin(), atol=1e-4)
    # RAS on disk: canonical columns and rows are the file's i and j reversed
    np.testing.assert_array_equal(ct.array, np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)[:, ::-1, ::-1])


@needs_data
def test_real_liver_label_lands_on_the_ct_and_saves_back_identically(tmp_path: Path) -> None:
    ct = load_ct(DATA / "example_ct_sm.nii.gz")
    liver_path = DATA / "example_seg_fast" / "liver.nii.gz"
    liver = load_label(liver_path, like=ct)
    assert liver.shape == ct.shape and int(liver.sum()) == 39350
    hu = ct.array[liver == 1]
    assert 40 <= np.median(hu) <= 52  # README: median 46
    assert np.count_nonzero(liver.reshape(30, -1).any(axis=1)) == 30

    out = save_mask(liver, ct, tmp_path / "liver.nii.gz")
    src, written = nib.load(liver_path), nib.load(out)
    np.testing.assert_array_equal(written.affine, src.affine)
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (0, 2)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(src.dataobj))
    again = load_ct(out)
    assert again.spacing == ct.spacing and again.origin == ct.origin
    np.testing.assert_array_equal(again.direction, ct.direction)
    np.testing.assert_array_equal(again.array, liver)

    total = load_label(DATA / "example_seg.nii.gz", like=ct)
    assert int((total == 5).sum()) == 38634
    with pytest.raises(CTReadError, match="liver.nii.gz.*shape"):
        load_label(DATA / "example_seg" / "liver.nii.gz", like=ct)  # the 112-slice grid


# ---------------------------------------------------------------- real CT (DICOM, JPEG 2000 lossless)


@pytest.fixture(scope="module")
def dicom_ct() -> CTVolume:
    if not DATA.is_dir():
        pytest.skip(f"real test CT not found at {DATA}")
    return load_ct(DATA / "dicom")


def _sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@needs_data
def test_real_dicom_series_loads(dicom_ct: CTVolume) -> None:
    ct = dicom_ct
    assert ct.shape == (20, 512, 512)
    assert ct.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.array.min() == -1024 and ct.array.max() == 1839
    np.testing.assert_allclose(ct.direction, np.eye(3))
    series = _sitk_series(DATA / "dicom")
    grid = ct.source.grid
    np.testing.assert_allclose(grid.origin, series.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(grid.spacing_xyz, series.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(grid.direction.ravel(), series.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(sitk.DICOMOrient(series, "LPS")))


@needs_data
def test_real_dicom_pydicom_fallback_matches(dicom_ct: CTVolume, monkeypatch: pytest.MonkeyPatch) -> None:
    import samliver.io.dicom as dicom_module

    def no_gdcm(slices):
        raise RuntimeError("GDCM cannot decode this")

    monkeypatch.setattr(dicom_module, "_decode_simpleitk", no_gdcm)
    ct = load_ct(DATA / "dicom")
    assert ct.source.decoder == "pydicom" and dicom_ct.source.decoder == "SimpleITK"
    np.testing.assert_array_equal(ct.array, dicom_ct.array)
    assert ct.spacing == dicom_ct.spacing and ct.origin == dicom_ct.origin


@needs_data
def test_real_dicom_liver_label_and_mask_on_the_dicom_grid(dicom_ct: CTVolume, tmp_path: Path) -> None:
    ct = dicom_ct
    seg_path = DATA / "example_seg_dicom.nii.gz"
    seg = load_label(seg_path, like=ct)
    liver = seg == 5
    assert int(liver.sum()) == 366708
    assert abs(float(ct.array[liver].mean()) - 89) < 3  # README: mean 89 (SD 22)
    # README's mapping, nifti[i, j, k] = dcm_k[511 - j, i], in canonical terms:
    np.testing.assert_array_equal(seg, np.asarray(nib.load(seg_path).dataobj).transpose(2, 1, 0)[:, ::-1, :])

    out = save_mask(liver, ct, tmp_path / "liver.nii.gz")
    written, reference, series = sitk.ReadImage(str(out)), sitk.ReadImage(str(seg_path)), _sitk_series(DATA / "dicom")
    # on the DICOM's own grid (voxel order as stored in the series) ...
    np.testing.assert_allclose(written.GetOrigin(), series.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(written.GetSpacing(), series.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(written.GetDirection(), series.GetDirection(), atol=1e-3)
    # ... covering the same voxels as the reference label, which stores the rows flipped (LAS)
    a, b = sitk.DICOMOrient(written, "LPS"), sitk.DICOMOrient(reference == 5, "LPS")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    for get in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(a, get)(), getattr(b, get)(), atol=1e-3)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference == 5)[:, ::-1, :])


@needs_data
def test_multi_series_folder_needs_a_series_uid(tmp_path: Path) -> None:
    import pydicom

    files = sorted((DATA / "dicom").iterdir())
    folder = tmp_path / "two_series"
    folder.mkdir()
    for path in files[:3]:
        shutil.copy(path, folder / path.name)
    for path in files[3:6]:
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(folder / path.name)
    with pytest.raises(CTReadError, match=r"two_series.*2 DICOM series.*1\.2\.826\.0\.1\.3680043\.8\.498\.1"):
        load_ct(folder)
    ct = load_ct(folder, series_uid="1.2.826.0.1.3680043.8.498.1")
    assert ct.shape == (3, 512, 512) and ct.spacing[0] == pytest.approx(2.0)
    assert load_ct(folder, series_uid="").shape == (3, 512, 512)
    with pytest.raises(CTReadError, match="two_series.*no series.*9.9.9"):
        load_ct(folder, series_uid="9.9.9")


@needs_data
def test_dicom_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    files = sorted((DATA / "dicom").iterdir())
    folder = tmp_path / "gap"
    folder.mkdir()
    for path in files[:2] + files[3:5]:
        shutil.copy(path, folder / path.name)
    with pytest.raises(CTReadError, match="gap.*unevenly spaced"):
        load_ct(folder)

