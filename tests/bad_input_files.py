"""Writers of the small inputs the bad-input corpus (tests/bad_inputs.py) and other reliability tests
start from: CTs, label maps, DICOM series, datasets, prompts files, checkpoints, adapters and configs,
all made on the fly (nothing is committed)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import torch

import samliver


def body_hu(shape_xyz=(24, 24, 4)) -> np.ndarray:
    """Air around a soft-tissue block, int16 HU, file order (x, y, z)."""
    hu = np.full(shape_xyz, -1000, np.int16)
    hu[3:-3, 3:-3] = 40
    return hu


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` (file order) as NIfTI; default affine: 1.5 x 1.5 x 3 mm voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), path)
    return path


def good_ct(folder: Path) -> Path:
    """``folder/ct.nii.gz``: a valid 4-slice CT of 24 x 24 pixels."""
    return nifti(folder / "ct.nii.gz", body_hu())


def liver_label(shape_xyz=(24, 24, 4), value: int = 1) -> np.ndarray:
    """A label map (file order) with a block of ``value`` inside `body_hu`'s body."""
    label = np.zeros(shape_xyz, np.uint8)
    label[6:16, 6:16, 1:3] = value
    return label


def dicom_series(folder: Path, n: int = 4, uid: str = "1.2.826.0.1.3680043.8.498.100", step: float = 2.0,
                 skip=(), truncate=(), half_rows=(), same_position=(), start: int = 0) -> Path:
    """A small CT series (16 x 16 slices, 1.5 mm pixels, ``step`` mm apart), one file per slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        if k in skip:
            continue
        sop = f"{uid}.{start + k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", uid
        ds.Modality, ds.PatientID = "CT", "PHANTOM"
        rows = 8 if k in half_rows else 16
        ds.Rows, ds.Columns = rows, 16
        ds.PixelSpacing = [1.5, 1.5]
        ds.ImagePositionPatient = [0.0, 0.0, (k - 1 if k in same_position else k) * step]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.InstanceNumber = step, k + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.zeros((rows, 16), np.int16)
        pixels[3:-3, 3:-3] = 1064  # 40 HU
        data = pixels.tobytes()
        ds.PixelData = data[: len(data) // 2] if k in truncate else data
        ds.save_as(folder / f"slice{start + k:03d}.dcm", enforce_file_format=True)
    return folder


def plain_dataset(root: Path, image: np.ndarray | None = None, label: np.ndarray | None = None,
                  label_affine: np.ndarray | None = None, write_label: bool = True) -> Path:
    """An ``images/`` + ``labels/`` dataset with one case ``case``."""
    nifti(root / "images" / "case.nii.gz", body_hu() if image is None else image)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    if write_label:
        nifti(root / "labels" / "case.nii.gz", liver_label() if label is None else label, label_affine)
    return root


def msd_dataset(root: Path, image_entry: Any = "./imagesTr/liver_0.nii.gz",
                label_entry: Any = "./labelsTr/liver_0.nii.gz",
                labels: Any = None, raw: str | None = None) -> Path:
    """An MSD folder with one case, whose dataset.json says what it is given."""
    nifti(root / "imagesTr" / "liver_0.nii.gz", body_hu())
    nifti(root / "labelsTr" / "liver_0.nii.gz", liver_label())
    meta = {"name": "Task03_Liver", "modality": {"0": "CT"},
            "labels": labels if labels is not None else {"0": "background", "1": "liver", "2": "cancer"},
            "training": [{"image": image_entry, "label": label_entry}]}
    (root / "dataset.json").write_text(raw if raw is not None else json.dumps(meta))
    return root


def prompts_file(folder: Path, content: Any) -> Path:
    path = folder / "prompts.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@functools.cache
def tiny_state() -> dict[str, torch.Tensor]:
    """samliver_tiny's random weights (made once; callers must not modify the tensors)."""
    torch.manual_seed(0)
    return samliver.load_model("samliver_tiny", checkpoint="random").sam.state_dict()


@functools.cache
def _adapter_files() -> dict[str, bytes]:
    """The two files of a ``decoder`` adapter for samliver_tiny on random weights (made once)."""
    import tempfile

    from samliver.adapters import apply_strategy, save_adapter

    torch.manual_seed(0)
    model = apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "decoder", {"head": "sam"})
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def saved_adapter(folder: Path, edit: Callable[[dict], dict] | None = None) -> Path:
    """A ``decoder`` adapter for samliver_tiny on random weights, its config passed through ``edit``."""
    folder.mkdir(parents=True)
    for name, data in _adapter_files().items():
        (folder / name).write_bytes(data)
    if edit is not None:
        config_path = folder / "adapter_config.json"
        config_path.write_text(json.dumps(edit(json.loads(config_path.read_text()))))
    return folder


class RunsCode:
    """Unpickling this runs code: it would create the file ``marker`` (the test checks it never appears)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def yaml_file(folder: Path, text: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(text)
    return path
