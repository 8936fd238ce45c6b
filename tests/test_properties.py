"""Property-based tests (hypothesis): prompt validation, the prompt -> model space -> slice mapping of
the SAM, MedSAM and SAM 2 conventions, and mask round trips through oblique NIfTI and DICOM grids in
random orientations and spacings.

Orientations and flips of axis-aligned NIfTI files are covered in tests/test_io.py; here the grids are
oblique (random rotations) or DICOM series (random ImageOrientationPatient and spacings).
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from samliver.errors import PromptError
from samliver.io import load_ct, load_label, save_mask
from samliver.models.conventions import get_convention
from samliver.prompts import Prompts, group_objects

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

coordinate = st.floats(-50, 600, allow_nan=False, width=32)
side = st.integers(8, 600)


# ------------------------------------------------------------------ prompt validation


@FAST
@given(boxes=st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), min_size=1, max_size=5))
def test_a_box_batch_is_valid_exactly_when_every_box_has_positive_width_and_height(boxes):
    array = np.asarray(boxes, np.float32)
    bad = np.flatnonzero((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1]))
    if bad.size:
        with pytest.raises(PromptError, match=rf"boxes\[{bad[0]}\]: need x0 < x1 and y0 < y1"):
            Prompts(boxes=array)
    else:
        prompts = Prompts(boxes=array)
        np.testing.assert_array_equal(prompts.boxes, array)
        np.testing.assert_array_equal(prompts.labels, np.ones(len(boxes), np.uint8))


@FAST
@given(boxes=st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), min_size=1, max_size=4),
       at=st.integers(0, 15), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_coordinates_are_refused(boxes, at, bad):
    array = np.asarray(boxes, np.float64)
    array.flat[at % array.size] = bad
    with pytest.raises(PromptError, match="boxes: contains NaN or infinite values"):
        Prompts(boxes=array)
    points = array.reshape(len(boxes), 2, 2)
    with pytest.raises(PromptError, match="points: contains NaN or infinite values"):
        Prompts(points=points, point_labels=np.ones((len(boxes), 2), int))


@FAST
@given(x0=coordinate, y0=coordinate, w=st.floats(0.125, 400, width=32), h=st.floats(0.125, 400, width=32),
       height=side, width=side)
def test_check_inside_clips_boxes_that_touch_the_image_and_refuses_the_others(x0, y0, w, h, height, width):
    box = np.array([[x0, y0, x0 + w, y0 + h]], np.float32)
    assume(box[0, 2] > box[0, 0] and box[0, 3] > box[0, 1])  # float32 may round x0 + w back to x0
    outside = box[0, 2] <= 0 or box[0, 3] <= 0 or box[0, 0] >= width or box[0, 1] >= height
    prompts = Prompts(boxes=box)
    if outside:
        with pytest.raises(PromptError, match=rf"boxes\[0\]: .* lies outside the {width}x{height}"):
            prompts.check_inside(height, width)
        return
    clipped = prompts.check_inside(height, width).boxes[0]
    expected = np.clip(box[0], 0, [width, height, width, height])
    np.testing.assert_array_equal(clipped, expected)
    assert clipped[0] < clipped[2] and clipped[1] < clipped[3]
    np.testing.assert_array_equal(Prompts(boxes=[clipped]).check_inside(height, width).boxes[0], clipped)


@FAST
@given(points=st.lists(st.tuples(coordinate, coordinate), min_size=1, max_size=6), height=side, width=side)
def test_points_must_lie_on_the_image(points, height, width):
    array = np.asarray(points, np.float32)[None]
    prompts = Prompts(points=array, point_labels=np.ones(array.shape[:2], int))
    inside = bool(((array[..., 0] >= 0) & (array[..., 0] <= width) & (array[..., 1] >= 0)
                   & (array[..., 1] <= height)).all())
    if inside:
        assert prompts.check_inside(height, width) is prompts
    else:
        with pytest.raises(PromptError, match=rf"points\[0\]: .* outside the {width}x{height}"):
            prompts.check_inside(height, width)


objects = st.lists(st.fixed_dictionaries(
    {"slice": st.integers(0, 5), "box": st.tuples(st.integers(0, 50), st.integers(0, 50), st.integers(51, 99),
                                                  st.integers(51, 99)).map(list),
     "label": st.integers(1, 2)}), min_size=1, max_size=8)


@FAST
@given(objs=objects)
def test_prompts_file_objects_survive_grouping_exactly(objs):
    grouped = group_objects(json.loads(json.dumps(objs)))
    back = sorted((z, tuple(float(v) for v in box), int(label))
                  for z, batches in grouped.items() for p in batches for box, label in zip(p.boxes, p.labels))
    assert back == sorted((o["slice"], tuple(float(v) for v in o["box"]), o["label"]) for o in objs)


@FAST
@given(labels=st.lists(st.integers(-300, 300), min_size=1, max_size=5))
def test_object_labels_must_be_1_to_255(labels):
    boxes = np.tile([[0, 0, 4, 4]], (len(labels), 1))
    if all(1 <= v <= 255 for v in labels):
        assert Prompts(boxes=boxes, labels=labels).labels.tolist() == labels
    else:
        with pytest.raises(PromptError, match=r"labels: must be integers in 1\.\.255"):
            Prompts(boxes=boxes, labels=labels)


# ------------------------------------------------------------------ prompt -> model space -> slice

@functools.cache
def convention(kind: str, size: int):
    """samliver's convention ``kind`` for a ``size``-pixel input (made once)."""
    return get_convention(kind, size)


@functools.cache
def upstream_transform(kind: str, size: int):
    """segment-anything's ``ResizeLongestSide`` or SAM 2's ``SAM2Transforms`` (slow to build: made once)."""
    if kind == "sam":
        from segment_anything.utils.transforms import ResizeLongestSide

        return ResizeLongestSide(size)
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(resolution=size, mask_threshold=0.0)


def upstream_coords(kind: str, size: int, coords: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Where the published implementations put slice pixel coordinates ``(..., 2)`` in model input pixels."""
    if kind == "sam":
        return upstream_transform(kind, size).apply_coords(coords.astype(np.float64), hw)
    if kind == "sam2":
        return upstream_transform(kind, size).transform_coords(torch.from_numpy(coords.astype(np.float64)),
                                                               normalize=True, orig_hw=hw).numpy()
    h, w = hw  # MedSAM's inference script: box_1024 = box / [W, H, W, H] * 1024
    return coords.astype(np.float64) / np.array([w, h]) * size


@FAST
@given(kind=st.sampled_from(["sam", "medsam", "sam2"]), size=st.sampled_from([256, 1024]), height=side, width=side,
       fractions=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5))
def test_prompt_coordinates_map_into_model_space_as_upstream_does(kind, size, height, width, fractions):
    conv = convention(kind, size)
    coords = (np.asarray(fractions) * [width, height]).astype(np.float32)
    expected = upstream_coords(kind, size, coords, (height, width))
    np.testing.assert_allclose(conv.map_coords(coords, (height, width)), expected, rtol=1e-6, atol=1e-4)
    boxes = np.concatenate([coords, coords + 1], axis=1)
    np.testing.assert_allclose(conv.map_boxes(boxes, (height, width)),
                               np.concatenate([expected, upstream_coords(kind, size, coords + 1, (height, width))],
                                              axis=1), rtol=1e-6, atol=1e-4)


@FAST
@given(kind=st.sampled_from(["sam", "medsam", "sam2"]), size=st.sampled_from([256, 1024]), height=side, width=side)
def test_model_space_maps_back_onto_the_slice_pixel_it_came_from(kind, size, height, width):
    """Low-res logits that hold each model-space position's own x (and y) coordinate, brought back to the
    slice by the convention's ``upsample``, must read ``map_coords`` of every slice pixel centre: the way
    back from model space is the exact inverse of the way in (away from the image border, where
    interpolation clamps)."""
    conv = convention(kind, size)
    low = size // 4  # SAM-family decoders give logits at a quarter of the input size
    centres = (np.arange(low, dtype=np.float64) + 0.5) * (size / low)  # model-input pixels
    field = torch.from_numpy(np.stack([np.broadcast_to(centres[None, :], (low, low)),
                                       np.broadcast_to(centres[:, None], (low, low))]))[None].float()
    back = conv.upsample(field, (height, width))[0].double().numpy()  # (2, H, W) model-space x, y
    ys, xs = np.mgrid[:height, :width]
    mapped = conv.map_coords(np.stack([xs + 0.5, ys + 0.5], -1).astype(np.float32), (height, width))
    margin = 3 * size / low
    extent = np.asarray(conv.map_coords(np.array([width, height], np.float32), (height, width)))
    inside = ((mapped[..., 0] > margin) & (mapped[..., 0] < extent[0] - margin)
              & (mapped[..., 1] > margin) & (mapped[..., 1] < extent[1] - margin))
    assume(inside.sum() > 0)
    np.testing.assert_allclose(back[0][inside], mapped[..., 0][inside], atol=2e-3 * size / 256)
    np.testing.assert_allclose(back[1][inside], mapped[..., 1][inside], atol=2e-3 * size / 256)


# ------------------------------------------------------------------ mask round trips on random grids

def rotation(angles) -> np.ndarray:
    """A rotation within 40 degrees of the axis-aligned frame (so the nearest axes are unambiguous)."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


signed_permutation = st.tuples(st.permutations([0, 1, 2]), st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3)).map(
    lambda ps: np.stack([ps[1][i] * np.eye(3)[ps[0][i]] for i in range(3)], axis=1))
small_angle = st.floats(-0.25, 0.25)


@SLOW
@given(frame=signed_permutation, angles=st.tuples(small_angle, small_angle, small_angle),
       spacing=st.tuples(*[st.sampled_from([0.6, 0.9, 1.5, 2.5, 5.0])] * 3), shape=st.tuples(*[st.integers(2, 6)] * 3),
       origin=st.tuples(*[st.floats(-200, 200)] * 3), seed=st.integers(0, 2**16))
def test_oblique_nifti_masks_round_trip_on_the_file_grid(frame, angles, spacing, shape, origin, seed):
    direction = rotation(angles) @ frame
    data = np.random.default_rng(seed).integers(0, 5, size=shape[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction.ravel().tolist())
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "ct.nii.gz"
        sitk.WriteImage(image, str(src))
        ct = load_ct(src)
        reference = sitk.DICOMOrient(sitk.ReadImage(str(src)), "LPS")
        np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(reference))
        np.testing.assert_allclose(ct.direction.ravel(), reference.GetDirection(), atol=1e-5)
        mask = (ct.array.astype(np.int64) * 7 % 4).astype(np.uint8)
        written = sitk.ReadImage(str(save_mask(mask, ct, Path(folder) / "mask.nii.gz")))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), (data.astype(np.int64) * 7 % 4))
        for get in ("GetSpacing", "GetOrigin", "GetDirection"):
            np.testing.assert_allclose(getattr(written, get)(), getattr(image, get)(), atol=1e-4)
        np.testing.assert_array_equal(load_label(Path(folder) / "mask.nii.gz", like=ct), mask)


def write_dicom(folder: Path, data: np.ndarray, direction: np.ndarray, spacing, origin) -> None:
    """``data`` ``[k, j, i]`` as a CT series: slice k at origin + k * step * normal, rows along direction[:, 1]."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    row_dir, col_dir = direction[:, 0], direction[:, 1]
    normal = np.cross(row_dir, col_dir)
    for k, plane in enumerate(data):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"1.2.3.4.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"1.2.3.4.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "CT"
        ds.Rows, ds.Columns = plane.shape
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [f"{v:g}" for v in (*row_dir, *col_dir)]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(plane, np.int16).tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


@SLOW
@given(frame=signed_permutation, spacing=st.tuples(st.sampled_from([0.7, 1.0, 1.5]), st.sampled_from([0.7, 1.0, 1.5]),
                                                   st.sampled_from([1.25, 2.0, 5.0])),
       shape=st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 5)),
       origin=st.tuples(*[st.integers(-200, 200)] * 3), seed=st.integers(0, 2**16))
def test_dicom_series_in_any_orientation_loads_canonical_and_masks_land_on_its_voxels(frame, spacing, shape, origin,
                                                                                     seed):
    data = np.random.default_rng(seed).integers(-1000, 1000, size=shape[::-1]).astype(np.int16)
    with tempfile.TemporaryDirectory() as folder:
        series = Path(folder) / "series"
        series.mkdir()
        write_dicom(series, data, frame, spacing, origin)
        ct = load_ct(series)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sorted(str(p) for p in series.iterdir()))
        reference = sitk.DICOMOrient(reader.Execute(), "LPS")
        np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(reference))
        np.testing.assert_allclose(ct.spacing[::-1], reference.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(ct.origin, reference.GetOrigin(), atol=1e-3)
        mask = (ct.array > 0).astype(np.uint8) + (ct.array > 500)
        out = save_mask(mask, ct, Path(folder) / "mask.nii.gz")
        np.testing.assert_array_equal(load_label(out, like=ct), mask)
        written = sitk.DICOMOrient(sitk.ReadImage(str(out)), "LPS")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
