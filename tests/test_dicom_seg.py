"""DICOM SEG output (`save_mask(..., "x.dcm")`): read back with highdicom and pydicom, its frames
land on the same voxels as the NIfTI mask, and it carries no patient identifiers beyond the source's.

The expected voxels are computed independently of samliver's reorientation code: every SEG pixel
is taken to LPS world millimetres from the frame's own ImagePositionPatient and the shared
ImageOrientationPatient / PixelSpacing, then into the NIfTI mask's voxel indices via its affine.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import samliver
from samliver.cli.main import main
from samliver.errors import MaskWriteError
from samliver.io import CTVolume, load_ct, load_label, save_image, save_mask
from tests.conftest import TOTALSEG, needs_shared_data, randomize_

LIVER_CODE, TUMOUR_CODE = "10200004", "108369006"  # SNOMED CT: Liver, Neoplasm
CODE_TO_LABEL = {LIVER_CODE: 1, TUMOUR_CODE: 2}

# identifiers in the synthetic source: the SEG needs the first group and must not carry the second
REQUIRED = {"PatientName": "Doe^Jane", "PatientID": "PID-0042", "PatientBirthDate": "19600101",
            "PatientSex": "F", "AccessionNumber": "ACC-991", "StudyID": "ST-17",
            "ReferringPhysicianName": "Ref^Erring"}
NOT_NEEDED = {"InstitutionName": "St Example Hospital", "InstitutionAddress": "1 Example Road, Exampletown",
              "StationName": "CT-SCANNER-7", "OperatorsName": "Op^Erator", "PatientAddress": "2 Private Lane",
              "PerformingPhysicianName": "Per^Former", "PatientComments": "allergic to contrast",
              "PatientAge": "063Y", "PatientWeight": "71", "StudyDescription": "CT abdomen for Jane",
              "OtherPatientIDs": "OTHER-123", "DeviceSerialNumber": "SN-5555", "ProtocolName": "LIVER_PROTO_X"}


# ---------------------------------------------------------------- synthetic series


def write_series(folder: Path, orientation: list[float], shape=(5, 10, 12), step=2.5, seed=0) -> list[Path]:
    """Write ``shape`` = (slices, rows, columns) single-frame CT files with ``orientation``
    (ImageOrientationPatient), slice ``k`` at ``origin + k * step * normal``; files are named and
    numbered in shuffled order, so nothing but the positions gives the slice order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    slices, rows, cols = shape
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-30.0, 12.5, -100.0])
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    order = rng.permutation(slices)
    paths = []
    for rank, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240102", "101010", 3, int(rank) + 1
        for keyword, value in {**REQUIRED, **NOT_NEEDED}.items():
            setattr(ds, keyword, value)
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in origin + k * step * normal]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], step  # rows 0.8 mm apart, columns 0.7 mm
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(0, 1400, (rows, cols)).astype(np.int16).tobytes()
        path = folder / f"img{rank:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def label_pattern(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Seeded ``(Z, Y, X)`` labels 0/1/2 with one empty slice (its frames must be omitted)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[0.5, 0.3, 0.2])
    labels[1] = 0
    return labels


ORIENTATIONS = {
    "axial": [1, 0, 0, 0, 1, 0],
    "axial-flipped": [-1, 0, 0, 0, -1, 0],  # rows and columns stored right-to-left, bottom-up
    "coronal": [1, 0, 0, 0, 0, -1],  # slices stack along P; canonical z comes from the file's rows
}


# ---------------------------------------------------------------- independent read-back


def seg_world_labels(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All SEG voxels via pydicom only: ``(N, 3)`` LPS mm of every set pixel, ``(N,)`` labels
    (from the segments' SNOMED property types), and each frame's referenced SOPInstanceUID."""
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    number_to_label = {int(s.SegmentNumber): CODE_TO_LABEL[s.SegmentedPropertyTypeCodeSequence[0].CodeValue]
                       for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    points, labels, refs = [], [], []
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        # one segment: highdicom may put its identification in the shared groups
        ident = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        label = number_to_label[int(ident[0].ReferencedSegmentNumber)]
        refs.append(str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
        r, c = np.nonzero(frame)
        points.append(ipp + c[:, None] * col_mm * iop[:3] + r[:, None] * row_mm * iop[3:])
        labels.append(np.full(len(r), label, np.uint8))
    return np.concatenate(points), np.concatenate(labels), refs


def labels_on_nifti_grid(points_lps: np.ndarray, labels: np.ndarray, nifti: nib.Nifti1Image) -> np.ndarray:
    """Paint ``labels`` at LPS ``points`` into an array on ``nifti``'s voxel grid (points must
    hit voxel centres: a SEG voxel is a NIfTI voxel, not a resampled one)."""
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    ijk = (np.linalg.inv(nifti.affine) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
    index = np.rint(ijk).astype(int)
    assert np.abs(ijk - index).max() < 1e-3, "SEG pixels are not on the NIfTI mask's voxel centres"
    out = np.zeros(nifti.shape, np.uint8)
    assert (index >= 0).all() and (index < np.array(nifti.shape)).all()
    np.maximum.at(out, tuple(index.T), labels)  # overlapping segments would show as the larger label
    return out


def expected_by_instance(ct: CTVolume, mask: np.ndarray, files: list[Path]) -> dict[str, np.ndarray]:
    """Each source file's ``(rows, columns)`` labels, found through world coordinates: the file's
    pixel centres → canonical voxel indices of ``ct`` (its origin, direction and spacing)."""
    matrix = ct.direction * np.asarray(ct.spacing[::-1])[None, :]  # canonical (x, y, z) index → LPS
    out = {}
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        iop, ipp = np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.ImagePositionPatient, float)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[: ds.Rows, : ds.Columns]
        world = ipp + c[..., None] * col_mm * iop[:3] + r[..., None] * row_mm * iop[3:]
        xyz = np.linalg.solve(matrix, (world - np.asarray(ct.origin)).reshape(-1, 3).T).T
        index = np.rint(xyz).astype(int)
        assert np.abs(xyz - index).max() < 1e-3
        uid = ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID
        out[str(uid)] = mask[index[:, 2], index[:, 1], index[:, 0]].reshape(ds.Rows, ds.Columns)
    return out


def all_elements(ds: pydicom.Dataset):
    for element in ds:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from all_elements(item)


def check_round_trip(ct: CTVolume, mask: np.ndarray, folder: Path, out_dir: Path) -> pydicom.Dataset:
    """Write ``mask`` as SEG and NIfTI; both cover the same voxels, frame by frame."""
    seg_path = save_mask(mask, ct, out_dir / "mask.dcm")
    nifti_path = save_mask(mask, ct, out_dir / "mask.nii.gz")
    assert seg_path == out_dir / "mask.dcm"

    # pydicom: positions → the NIfTI mask's voxels, exactly
    nifti = nib.load(nifti_path)
    points, labels, refs = seg_world_labels(seg_path)
    np.testing.assert_array_equal(labels_on_nifti_grid(points, labels, nifti), np.asarray(nifti.dataobj))
    np.testing.assert_array_equal(load_label(nifti_path, like=ct), mask)

    # each frame references the source slice at its position, and only present labels are segments
    files = [p for p in sorted(folder.iterdir()) if p.name != "mask.dcm"]
    expected = expected_by_instance(ct, mask, files)
    positions = {}
    for file in files:
        header = pydicom.dcmread(file, stop_before_pixels=True)
        positions[str(header.file_meta.MediaStorageSOPInstanceUID)] = header.ImagePositionPatient
    seg_ds = pydicom.dcmread(seg_path)
    for item, uid in zip(seg_ds.PerFrameFunctionalGroupsSequence, refs):
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient, positions[uid], atol=1e-4)
    present = sorted(int(v) for v in np.unique(mask) if v)
    assert [CODE_TO_LABEL[s.SegmentedPropertyTypeCodeSequence[0].CodeValue] for s in seg_ds.SegmentSequence] == present
    assert len(refs) == sum(int((m == v).any()) for m in expected.values() for v in present)  # empty frames omitted

    # highdicom: pixels per source instance (empty frames come back as zeros)
    seg = hd.seg.segread(seg_path)
    uids = list(expected)
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers)
    number_to_label = {n: CODE_TO_LABEL[seg.get_segment_description(n).segmented_property_type.value]
                       for n in numbers}
    for uid, frame in zip(uids, pixels):  # frame: (rows, columns, segments)
        got = np.zeros(frame.shape[:2], np.uint8)
        for s, n in enumerate(numbers):
            got[frame[..., s] > 0] = number_to_label[n]
        np.testing.assert_array_equal(got, expected[uid], err_msg=uid)
    return seg_ds


# ---------------------------------------------------------------- synthetic tests


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_seg_frames_cover_the_nifti_mask_voxels(tmp_path: Path, orientation: str) -> None:
    folder = tmp_path / "series"
    write_series(folder, ORIENTATIONS[orientation])
    ct = load_ct(folder)
    mask = label_pattern(ct.shape, seed=len(orientation))
    check_round_trip(ct, mask, folder, tmp_path)


def test_seg_has_one_segment_per_present_label_with_snomed_codes(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, ORIENTATIONS["axial"])
    ct = load_ct(folder)
    tumour_only = np.zeros(ct.shape, np.uint8)
    tumour_only[2, 3:6, 4:9] = 2
    seg_ds = check_round_trip(ct, tumour_only, folder, tmp_path)
    (segment,) = seg_ds.SegmentSequence
    assert int(segment.SegmentNumber) == 1 and segment.SegmentLabel == "tumour"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # morph. abnormal structure
    assert segment.AnatomicRegionSequence[0].CodeValue == LIVER_CODE
    assert int(seg_ds.NumberOfFrames) == 1 and seg_ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    assert seg_ds.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"

    both = label_pattern(ct.shape)
    seg_ds = check_round_trip(ct, both, folder, tmp_path)
    liver = seg_ds.SegmentSequence[0]
    assert liver.SegmentLabel == "liver" and liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"


def test_seg_carries_only_the_needed_study_references_and_no_new_identifiers(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    files = write_series(folder, ORIENTATIONS["axial"])
    ct = load_ct(folder)
    seg_path = save_mask(label_pattern(ct.shape), ct, tmp_path / "mask.dcm")
    seg, src = pydicom.dcmread(seg_path), pydicom.dcmread(files[0], stop_before_pixels=True)
    # the same patient and study, so PACS files it beside the CT ...
    for keyword, value in REQUIRED.items():
        assert str(seg.data_element(keyword).value) == value, keyword
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID not in {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    # ... and nothing else of the source's headers, anywhere in the file
    raw = seg_path.read_bytes()
    elements = list(all_elements(seg))
    for keyword, value in NOT_NEEDED.items():
        assert value not in [str(e.value) for e in elements if e.keyword == keyword], keyword
        if any(ch.isalpha() for ch in value):  # digits alone may occur inside random UIDs
            assert value.encode() not in raw, value
    assert str(tmp_path).encode() not in raw
    # no person name or date samliver made up: every PN is the source's, every date is the study's or today's
    names = {str(e.value) for e in all_elements(seg) if e.VR == "PN"}
    assert names <= {REQUIRED["PatientName"], REQUIRED["ReferringPhysicianName"]}
    today = datetime.date.today().strftime("%Y%m%d")
    dates = {str(e.value) for e in all_elements(seg) if e.VR == "DA" and e.value}
    assert dates <= {REQUIRED["PatientBirthDate"], src.StudyDate, today}


def test_seg_written_into_the_series_folder_leaves_the_series_readable(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, ORIENTATIONS["coronal"])
    ct = load_ct(folder)
    save_mask(label_pattern(ct.shape), ct, folder / "zz_seg.dcm")
    again = load_ct(folder)
    np.testing.assert_array_equal(again.array, ct.array)
    assert len(again.source.dicom_files) == ct.shape[1]  # coronal slices: canonical rows are file slices
    assert again.source.dicom_files == ct.source.dicom_files


@pytest.mark.parametrize(("make", "mask_value", "message"), [
    ("nifti", 1, r"needs a CT read from a DICOM series folder, not \S*ct\.nii\.gz"),
    ("memory", 1, "needs a CT read from a DICOM series folder, not a volume made in memory"),
    ("dicom", 0, "mask is empty"),
    ("dicom", 3, r"labels 1 \(liver\), 2 \(tumour\).*\[3\]"),
])
def test_seg_errors_are_one_line_and_leave_nothing(tmp_path: Path, make: str, mask_value: int, message: str) -> None:
    if make == "dicom":
        write_series(tmp_path / "series", ORIENTATIONS["axial"])
        ct = load_ct(tmp_path / "series")
    elif make == "nifti":
        nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4)), tmp_path / "ct.nii.gz")
        ct = load_ct(tmp_path / "ct.nii.gz")
    else:
        ct = CTVolume(np.zeros((4, 5, 6)), spacing=(1, 1, 1))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(MaskWriteError, match=message) as info:
        save_mask(np.full(ct.shape, mask_value, np.uint8), ct, out_dir / "mask.dcm")
    assert "\n" not in str(info.value) and str(out_dir / "mask.dcm") in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_seg_refuses_a_source_slice_that_changed(tmp_path: Path) -> None:
    files = write_series(tmp_path / "series", ORIENTATIONS["axial"])
    ct = load_ct(tmp_path / "series")
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(files[2])
    with pytest.raises(MaskWriteError, match=f"{files[2].name}: SOPInstanceUID changed"):
        save_mask(label_pattern(ct.shape), ct, tmp_path / "mask.dcm")
    assert not (tmp_path / "mask.dcm").exists()
    with pytest.raises(MaskWriteError, match="refusing to overwrite a slice"):
        save_mask(label_pattern(ct.shape), ct, files[0])


def test_segment_command_writes_dicom_seg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "series"
    write_series(folder, ORIENTATIONS["axial"], shape=(4, 40, 48))
    model = randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=4)
    checkpoint = tmp_path / "tiny.pth"
    torch.save(model.sam.state_dict(), checkpoint)
    out = tmp_path / "out.dcm"
    rc = main(["segment", str(folder), "--model", "samliver_tiny", "--checkpoint", str(checkpoint),
               "--box", "1,5,5,40,30", "-o", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    ct = load_ct(folder)
    from samliver.prompts import Prompts

    expected = samliver.Predictor(model).segment_volume(ct, {1: Prompts(boxes=[[5, 5, 40, 30]])})
    assert expected.any()
    points, labels, _ = seg_world_labels(out)
    nifti = nib.load(save_mask(expected, ct, tmp_path / "expected.nii.gz"))
    np.testing.assert_array_equal(labels_on_nifti_grid(points, labels, nifti), np.asarray(nifti.dataobj))

    # a NIfTI CT with -o .dcm: one line, exit 2, nothing written
    save_image(ct, tmp_path / "ct.nii.gz")
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", "samliver_tiny", "--checkpoint", str(checkpoint),
               "--box", "1,5,5,40,30", "-o", str(tmp_path / "nifti_in.dcm")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "needs a CT read from a DICOM series" in err
    assert not (tmp_path / "nifti_in.dcm").exists()


# ---------------------------------------------------------------- the real DICOM series


@needs_shared_data
def test_real_series_seg_round_trip(tmp_path: Path) -> None:
    folder = TOTALSEG / "dicom"
    ct = load_ct(folder)
    liver = load_label(TOTALSEG / "example_seg_dicom.nii.gz", like=ct) == 5
    mask = liver.astype(np.uint8)
    # a spherical 'tumour' of radius 12 mm inside the liver, on the slices above the centre
    z, y, x = np.argwhere(liver).mean(axis=0).round().astype(int)
    zz, yy, xx = np.ogrid[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    ball = ((zz - z) * ct.spacing[0]) ** 2 + ((yy - y) * ct.spacing[1]) ** 2 + ((xx - x) * ct.spacing[2]) ** 2 < 144
    mask[ball & liver & (zz >= z)] = 2
    seg_ds = check_round_trip(ct, mask, folder, tmp_path)
    # the source's data sets leave SOP/Study/Series UIDs empty: frames reference the file-meta UIDs
    metas = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
             for f in folder.iterdir()}
    refs = {str(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for i in seg_ds.PerFrameFunctionalGroupsSequence}
    assert refs == metas  # liver on every slice
    raw = (tmp_path / "mask.dcm").read_bytes()
    for private in (b"Petersgraben", b"PETCT2", b"FDG_TK_KM", b"SIEMENS", b"Biograph"):
        assert private not in raw, private
