"""DICOM SEG output: a label map as a highdicom BINARY Segmentation that references, frame by
frame, the DICOM series its CT was read from, so PACS viewers and 3D Slicer show it on that series.

What is copied from the source series is an explicit allow-list (`_COPIED`): the patient and study
attributes the SEG IOD requires to sit in the source's study (Type 1/2 of the Patient and General
Study modules), the series/instance/frame-of-reference references and the slice geometry. Nothing
else of the source headers reaches the output (no institution, station, operator or physician
beyond the required referring physician, no patient age/weight/comments), and samliver adds no
identifiers of its own. highdicom and pydicom are imported only when a SEG is written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from samliver.atomic import write_bytes_atomic
from samliver.errors import MaskWriteError

if TYPE_CHECKING:
    import pydicom

    from samliver.io.ct import CTVolume, SourceInfo

# Attributes taken from each source slice's header; all others are dropped before highdicom sees it.
_PATIENT_STUDY = (  # Type 1/2: empty where the source has none
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
_REFERENCES = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "FrameOfReferenceUID")
_GEOMETRY = ("Rows", "Columns", "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
             "SliceThickness")
_COPIED = ("SpecificCharacterSet", *_PATIENT_STUDY, *_REFERENCES, *_GEOMETRY)

SERIES_NUMBER = 1000  # SEG series number; sorts the SEG after the scanner's own series


@dataclass(frozen=True)
class SegmentKind:
    """How one samliver label is described as a DICOM segment (SNOMED CT codes, CID 7150/7151)."""

    name: str
    category: str  # pydicom `codes.SCT` keyword of the segmented property category
    property_type: str  # `codes.SCT` keyword of the segmented property type


#: samliver label (LiTS/MSD convention) -> segment description; other labels cannot be written
SEGMENT_KINDS: dict[int, SegmentKind] = {
    1: SegmentKind("liver", "AnatomicalStructure", "Liver"),
    2: SegmentKind("tumour", "MorphologicallyAbnormalStructure", "Neoplasm"),
}


def write_dicom_seg(
    labels: np.ndarray,
    like: CTVolume,
    path: str | Path,
    *,
    series_description: str = "samliver segmentation",
    algorithm_type: str = "SEMIAUTOMATIC",
) -> Path:
    """Write ``labels`` as a DICOM SEG that references the DICOM series ``like`` was read from.

    Args:
        labels: ``(Z, Y, X)`` uint8 labels in ``like``'s canonical orientation (voxel-aligned
            with ``like.array``); 0 background, 1 liver, 2 tumour. One BINARY segment per label
            present (segment numbers 1.. in label order); frames with no voxels are omitted.
        like: a CT read from a DICOM series folder (`samliver.load_ct`); its source files are
            re-read (headers only) for the references.
        path: the ``.dcm`` file to write (atomically: nothing is left on failure).
        series_description: the SEG series' description.
        algorithm_type: ``SEMIAUTOMATIC`` (prompted, the default) or ``AUTOMATIC``.

    Each frame of the SEG is one source slice in the source's own pixel order, carrying that
    slice's SOPInstanceUID and ImagePositionPatient. Where the source leaves its Study/Series
    Instance UID empty (some de-identified data), a UID derived from the slices' SOPInstanceUIDs
    stands in, so every SEG of one series lands in one study.

    Raises:
        MaskWriteError: not a DICOM source, empty mask, labels other than 1/2, source files
            changed or unreadable, or the write failed; the message names the file.
    """
    out = Path(path)
    source = _dicom_source(like, out)
    present = [int(v) for v in np.unique(labels) if v]
    unknown = [v for v in present if v not in SEGMENT_KINDS]
    if unknown:
        known = ", ".join(f"{k} ({kind.name})" for k, kind in SEGMENT_KINDS.items())
        raise MaskWriteError(f"{out}: DICOM SEG output knows labels {known}; the mask also has {unknown}")
    if not present:
        raise MaskWriteError(f"{out}: the mask is empty; a DICOM SEG needs at least one segment "
                             "(write .nii.gz for an empty mask)")
    if out.resolve() in {p.resolve() for p in source.dicom_files}:
        raise MaskWriteError(f"{out}: refusing to overwrite a slice of the series the mask was made for")
    headers = _reference_headers(source)
    file_order = source.reorientation.from_canonical(np.asarray(labels))  # [k, row, column]
    expected = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    if file_order.shape != expected:
        raise MaskWriteError(f"{out}: mask covers {file_order.shape} (slices, rows, columns) voxels; "
                             f"the series {source.path} has {expected}")
    payload = _segmentation_bytes(file_order, present, headers, series_description, algorithm_type, out)
    try:
        write_bytes_atomic(out, payload)
    except OSError as exc:
        raise MaskWriteError(f"{out}: write failed ({exc.strerror or exc})") from exc
    return out


def _dicom_source(like: CTVolume, out: Path) -> SourceInfo:
    source = like.source
    if source is None or source.kind != "dicom" or not source.dicom_files:
        what = f"not {source.path}" if source is not None else "not a volume made in memory"
        raise MaskWriteError(f"{out}: DICOM SEG output needs a CT read from a DICOM series folder, {what} "
                             "(write .nii or .nii.gz instead)")
    return source


def _reference_headers(source: SourceInfo) -> list[pydicom.Dataset]:
    """The allow-listed header of each source slice, in file slice order ``k``."""
    import pydicom
    from pydicom.uid import generate_uid

    headers = []
    for file, expected_uid in zip(source.dicom_files, source.sop_instance_uids or [""] * len(source.dicom_files)):
        try:
            full = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as exc:  # a file removed or replaced since load_ct
            raise MaskWriteError(f"{file}: cannot re-read the source slice ({type(exc).__name__}: {exc})") from exc
        header = pydicom.Dataset()
        for keyword in _COPIED:
            if keyword in full:
                setattr(header, keyword, full.data_element(keyword).value)
        meta = getattr(full, "file_meta", pydicom.Dataset())
        # an empty UID in the data set: the file meta names the instance too (de-identified data)
        header.SOPInstanceUID = header.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
        header.SOPClassUID = header.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
        if not header.SOPInstanceUID or not header.SOPClassUID:
            raise MaskWriteError(f"{file}: no SOPInstanceUID/SOPClassUID; a DICOM SEG cannot reference this slice")
        if expected_uid and header.SOPInstanceUID != expected_uid:
            raise MaskWriteError(f"{file}: SOPInstanceUID changed since the series was read")
        for keyword in _PATIENT_STUDY:
            if keyword not in header:
                setattr(header, keyword, "")
        headers.append(header)
    instance_uids = [str(h.SOPInstanceUID) for h in headers]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        stand_in = generate_uid(entropy_srcs=[keyword, *instance_uids])
        for header in headers:
            if not header.get(keyword):
                setattr(header, keyword, stand_in)
    if not headers[0].get("FrameOfReferenceUID"):
        raise MaskWriteError(f"{source.path}: the series has no FrameOfReferenceUID; "
                             "a DICOM SEG cannot be placed on it")
    return headers


def _segmentation_bytes(file_order: np.ndarray, present: list[int], headers: list[pydicom.Dataset],
                        series_description: str, algorithm_type: str, out: Path) -> bytes:
    """Encode ``file_order`` ``(K, rows, columns)`` labels as a BINARY SEG (one segment per label)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from samliver import __version__

    algorithm = hd.AlgorithmIdentificationSequence(name="samliver", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, label in enumerate(present, start=1):
        kind = SEGMENT_KINDS[label]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=kind.name,
            segmented_property_category=getattr(codes.SCT, kind.category),
            segmented_property_type=getattr(codes.SCT, kind.property_type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues(algorithm_type),
            algorithm_identification=algorithm,
            # the tumour lies in the liver; the liver is its own region
            anatomic_regions=[codes.SCT.Liver] if kind.property_type != "Liver" else None,
        ))
    # stacked-segments layout (K, rows, columns, segments): segment n is label present[n - 1]
    stacked = np.stack([file_order == label for label in present], axis=-1).astype(np.uint8)
    try:
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="samliver",
            manufacturer_model_name="samliver",
            software_versions=__version__,
            device_serial_number="none",
            content_label="SAMLIVER",
            content_description="liver / liver tumour segmentation (samliver)",
            series_description=series_description,
        )
        buffer = io.BytesIO()
        seg.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise MaskWriteError(f"{out}: highdicom cannot build the segmentation ({type(exc).__name__}: {exc})") from exc
    return buffer.getvalue()
