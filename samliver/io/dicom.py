"""DICOM series reading: pydicom finds and sorts the series, SimpleITK (GDCM) decodes it, and
pydicom (+ pylibjpeg / gdcm plugins) decodes it where SimpleITK cannot. All imports are lazy."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samliver.errors import CTReadError
from samliver.io.orient import Grid

_HEADER_TAGS = [
    "SeriesInstanceUID", "SeriesDescription", "Modality", "Rows", "Columns", "PixelSpacing",
    "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "SliceThickness",
    "SOPInstanceUID",
]
# derived objects beside a series (segmentations, e.g. samliver's own DICOM SEG output) are not slices
_NOT_SLICES = {"SEG", "RTSTRUCT", "RTDOSE", "SR", "PR", "KO"}
# relative tolerance on slice gaps before a series counts as unevenly spaced
_GAP_RTOL = 0.05


@dataclass(frozen=True)
class _Slice:
    path: Path
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 direction cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    frames: int
    sop_instance_uid: str = ""


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (only those bytes are read), whatever
    its name (series files often have no ``.dcm`` suffix)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dicom_series(
    folder: Path, series_uid: str | None = None
) -> tuple[np.ndarray, Grid, str, str, tuple[tuple[Path, str], ...]]:
    """Read one DICOM series from the files directly in ``folder`` (subfolders are not searched).

    Returns:
        array: numpy ``[k, j, i]`` float32 (stored values through Rescale Slope/Intercept, so HU
            for CT); k runs along the slice normal (ImageOrientationPatient row × column).
        grid: the series' grid in LPS, as SimpleITK reads it.
        series_uid: the SeriesInstanceUID read.
        decoder: ``"SimpleITK"`` or ``"pydicom"``, whichever decoded the pixels.
        instances: ``(path, SOPInstanceUID)`` of each slice in ``k`` order (the UID as stored,
            ``""`` where the file leaves it empty).
    """
    series = _scan(folder)
    if not series:
        raise CTReadError(f"{folder}: no DICOM files in this folder (subfolders are not searched)")
    uid = _select(folder, series, series_uid)
    slices = _sorted_slices(folder, uid, series[uid])
    grid = _grid(folder, slices)
    _check_pixel_data(slices)
    try:
        array = _decode_simpleitk(slices)
        decoder = "SimpleITK"
    except MemoryError:
        raise
    except Exception as sitk_exc:  # GDCM cannot decode every transfer syntax
        try:
            array = _decode_pydicom(slices)
            decoder = "pydicom"
        except MemoryError:
            raise
        except Exception as exc:
            raise CTReadError(
                f"{folder}: cannot decode the DICOM pixel data (SimpleITK: {_why(sitk_exc)}; "
                f"pydicom: {_why(exc)})"
            ) from exc
    expected = (len(slices), slices[0].rows, slices[0].columns)
    if array.shape != expected:
        raise CTReadError(f"{folder}: decoded pixel data has shape {array.shape}, headers say {expected}")
    return array, grid, uid, decoder, tuple((s.path, s.sop_instance_uid) for s in slices)


def _scan(folder: Path) -> dict[str, list[_Slice]]:
    """Image instances of every series in ``folder``, keyed by SeriesInstanceUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[_Slice]] = defaultdict(list)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            continue  # not DICOM (or unreadable): other files may sit beside a series
        if "Rows" not in ds or str(ds.get("Modality", "")).upper() in _NOT_SLICES:
            continue  # DICOMDIR, structured reports, RT structures, segmentations ...
        uid = str(ds.get("SeriesInstanceUID", ""))
        try:
            series[uid].append(
                _Slice(
                    path=path,
                    position=np.asarray([float(v) for v in ds.ImagePositionPatient]),
                    orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient]),
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                    pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                    frames=int(ds.get("NumberOfFrames", 1) or 1),
                    sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                )
            )
        except (AttributeError, TypeError, ValueError, IndexError) as exc:
            raise CTReadError(f"{path}: DICOM image without usable position/orientation/spacing ({_why(exc)})") from exc
    return dict(series)


def _select(folder: Path, series: dict[str, list[_Slice]], series_uid: str | None) -> str:
    if series_uid is not None:
        if series_uid not in series:
            raise CTReadError(f"{folder}: no series with SeriesInstanceUID {series_uid!r}; found {_listing(series)}")
        return series_uid
    if len(series) > 1:
        raise CTReadError(f"{folder}: {len(series)} DICOM series; pass series_uid= one of {_listing(series)}")
    return next(iter(series))


def _listing(series: dict[str, list[_Slice]]) -> str:
    return ", ".join(f"{uid!r} ({len(s)} files)" for uid, s in sorted(series.items()))


def _sorted_slices(folder: Path, uid: str, slices: list[_Slice]) -> list[_Slice]:
    what = f"{folder}: series {uid!r}"
    if any(s.frames > 1 for s in slices):
        raise CTReadError(f"{what}: multi-frame (enhanced) DICOM is not supported; export single-frame slices")
    if len(slices) < 2:
        raise CTReadError(f"{what}: a single 2D slice; a 3D volume (2 or more slices) is required")
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns) or not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise CTReadError(f"{what}: slices differ in size or orientation ({first.path.name} vs {s.path.name})")
    normal = np.cross(first.orientation[:3], first.orientation[3:])
    ordered = sorted(slices, key=lambda s: float(s.position @ normal))
    gaps = np.diff([float(s.position @ normal) for s in ordered])
    if np.any(gaps <= 1e-6):
        raise CTReadError(f"{what}: two or more slices share one position")
    if np.max(gaps) - np.min(gaps) > _GAP_RTOL * np.median(gaps):
        raise CTReadError(
            f"{what}: slices are unevenly spaced ({np.min(gaps):.3g} to {np.max(gaps):.3g} mm); missing slices?"
        )
    return ordered


def _grid(folder: Path, slices: list[_Slice]) -> Grid:
    first, last = slices[0], slices[-1]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    # SimpleITK's slice spacing: the mean step along the normal
    step = float((last.position - first.position) @ normal) / (len(slices) - 1)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    return Grid(
        shape_xyz=(first.columns, first.rows, len(slices)),
        spacing_xyz=(first.pixel_spacing[1], first.pixel_spacing[0], step),
        origin=tuple(float(v) for v in first.position),
        direction=direction,
    )


def _check_pixel_data(slices: list[_Slice]) -> None:
    """Refuse a slice whose uncompressed pixel data is shorter than its header says. GDCM (SimpleITK)
    decodes such a file without an error, filling the missing voxels with whatever memory follows."""
    import pydicom

    for s in slices:
        try:
            ds = pydicom.dcmread(s.path, defer_size=1024)  # the pixel data itself stays on disk
            element = ds.get_item("PixelData", keep_deferred=True)
            syntax = ds.file_meta.get("TransferSyntaxUID")
            rows, columns = int(ds.Rows), int(ds.Columns)
            bits, samples = int(ds.get("BitsAllocated", 16)), int(ds.get("SamplesPerPixel", 1) or 1)
        except Exception as exc:  # pydicom raises many types for a damaged file
            raise CTReadError(f"{s.path}: unreadable DICOM file ({_why(exc)})") from exc
        if element is None:
            raise CTReadError(f"{s.path}: DICOM image without pixel data")
        length = getattr(element, "length", None)
        if length is None:
            length = len(element.value or b"")
        if length == 0xFFFFFFFF or (syntax is not None and syntax.is_encapsulated):
            continue  # compressed: the decoder checks its own stream
        expected = rows * columns * samples * s.frames * ((bits + 7) // 8)
        if length < expected:
            raise CTReadError(f"{s.path}: pixel data holds {length} bytes, but {rows}x{columns} {bits}-bit pixels "
                              f"need {expected}; the file is truncated or corrupt")


def _decode_simpleitk(slices: list[_Slice]) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


def _decode_pydicom(slices: list[_Slice]) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_rescale

    planes = []
    for s in slices:
        ds = pydicom.dcmread(s.path)
        planes.append(np.asarray(apply_rescale(ds.pixel_array, ds), dtype=np.float32))
    return np.stack(planes)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text[:300]}"
