"""`Prompts` validation and prompts simulated from ground-truth masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samliver.errors import PromptError
from samliver.prompts import Prompts, boxes_from_mask, points_from_mask, read_prompts_file


def _two_objects() -> np.ndarray:
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 10:30] = 1          # liver-like block
    mask[25:28, 40:41] = 2         # a thin lesion
    mask[30, 5] = 1                # one-pixel object
    return mask


def test_boxes_from_mask_one_box_per_object_with_pixel_edges():
    p = boxes_from_mask(_two_objects())
    np.testing.assert_array_equal(p.boxes, [[10, 5, 30, 15], [5, 30, 6, 31], [40, 25, 41, 28]])
    np.testing.assert_array_equal(p.labels, [1, 1, 2])


def test_boxes_from_mask_diagonal_pixels_are_one_object_and_empty_is_none():
    mask = np.zeros((8, 8), bool)
    mask[2, 2] = mask[3, 3] = True
    assert len(boxes_from_mask(mask)) == 1
    assert boxes_from_mask(np.zeros((8, 8), bool)) is None


def test_jitter_is_seeded_bounded_and_in_mm():
    mask = _two_objects()
    exact = boxes_from_mask(mask).boxes
    a = boxes_from_mask(mask, jitter_px=3, rng=7).boxes
    b = boxes_from_mask(mask, jitter_px=3, rng=np.random.default_rng(7)).boxes
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, exact)
    inside = (a >= 0).all() and (a[:, [0, 2]] <= 50).all() and (a[:, [1, 3]] <= 40).all()
    assert inside and (np.abs(a - exact) <= 3 + 1e-6).all()
    # 5 mm on 2.5 mm rows / 0.5 mm columns is 2 px vertically and 10 px horizontally.
    mm = boxes_from_mask(mask, jitter_mm=5, spacing=(2.5, 0.5), rng=3).boxes
    d = np.abs(mm - exact)
    assert (d[:, [1, 3]] <= 2 + 1e-6).all() and d[:, [0, 2]].max() > 2
    with pytest.raises(ValueError, match="jitter_mm needs spacing"):
        boxes_from_mask(mask, jitter_mm=5)


@given(st.integers(0, 2**32 - 1), st.floats(0, 30))
@settings(max_examples=60, deadline=None)
def test_jittered_boxes_stay_valid(seed, jitter):
    p = boxes_from_mask(_two_objects(), jitter_px=jitter, rng=seed)
    assert (p.boxes[:, 2] > p.boxes[:, 0]).all() and (p.boxes[:, 3] > p.boxes[:, 1]).all()
    p.check_inside(40, 50)


def test_points_from_mask_first_click_is_interior_and_negatives_are_outside():
    mask = _two_objects()
    p = points_from_mask(mask, n_pos=3, n_neg=2, rng=0)
    assert p.points.shape == (3, 5, 2)
    np.testing.assert_array_equal(p.point_labels, [[1, 1, 1, 0, 0]] * 3)
    for obj, (pts, lab) in enumerate(zip(p.points, p.labels)):
        xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
        assert (mask[ys[:3], xs[:3]] == lab).all()
        assert (mask[ys[3:], xs[3:]] != lab).all()
    np.testing.assert_array_equal(p.points[0, 0], [19, 9])  # centre-most pixel of the block
    np.testing.assert_array_equal(points_from_mask(mask, 3, 2, rng=0).points, p.points)


@pytest.mark.parametrize("kwargs, message", [
    (dict(boxes=[[10, 10, 5, 20]]), r"boxes\[0\]: need x0 < x1"),
    (dict(boxes=[[1, 2, 3]]), r"boxes: expected shape \(N, 4\)"),
    (dict(boxes=[[0, 0, np.inf, 4]]), "boxes: contains NaN or infinite"),
    (dict(points=[[[1, 2]]]), "point_labels: required"),
    (dict(points=[[[1, 2]]], point_labels=[[2]]), "point_labels: values must be 1"),
    (dict(boxes=[[0, 0, 4, 4]], points=[[[1, 2]], [[2, 3]]], point_labels=[[1], [1]]), "object counts differ"),
    (dict(boxes=[[0, 0, 4, 4]], labels=[0]), "labels: must be integers in 1..255"),
    (dict(), "need at least one of boxes"),
])
def test_invalid_prompts_name_the_field(kwargs, message):
    with pytest.raises(PromptError, match=message):
        Prompts(**kwargs)


def test_check_inside_clips_and_refuses_outside():
    p = Prompts(boxes=[[-5, 2, 20, 60]]).check_inside(40, 30)
    np.testing.assert_array_equal(p.boxes, [[0, 2, 20, 40]])
    with pytest.raises(PromptError, match=r"boxes\[0\].*outside the 30x40"):
        Prompts(boxes=[[31, 0, 40, 5]]).check_inside(40, 30)
    with pytest.raises(PromptError, match=r"points\[0\].*outside"):
        Prompts(points=[[[31, 5]]], point_labels=[[1]]).check_inside(40, 30)


def test_prompts_file_groups_by_slice_and_layout(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"objects": [
        {"slice": 3, "box": [1, 2, 10, 12], "label": 1},
        {"slice": 3, "box": [4, 4, 8, 8], "label": 2},
        {"slice": 3, "points": [[5, 5], [1, 1]], "point_labels": [1, 0]},
        {"slice": 7, "box": [0, 0, 5, 5], "points": [[2, 2]], "point_labels": [1]},
    ]}))
    prompts = read_prompts_file(path)
    assert sorted(prompts) == [3, 7]
    boxes, points = sorted(prompts[3], key=lambda p: p.boxes is None)
    np.testing.assert_array_equal(boxes.labels, [1, 2])
    assert points.boxes is None and points.points.shape == (1, 2, 2)
    assert prompts[7][0].boxes.shape == (1, 4) and prompts[7][0].points.shape == (1, 1, 2)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON prompts file"),
    ('{"objects": []}', "at least one object"),
    ('{"objects": [{"slice": 1}]}', r"objects\[0\]: needs a box or points"),
    ('{"objects": [{"slice": -1, "box": [0, 0, 1, 1]}]}', r"objects\[0\].slice"),
    ('{"objects": [{"slice": 1, "bbox": [0, 0, 1, 1]}]}', r"unknown keys \['bbox'\]"),
    ('{"objects": [{"slice": 1, "box": [5, 0, 1, 1]}]}', r"slice 1: boxes\[0\]"),
])
def test_bad_prompts_file_names_file_and_object(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PromptError, match=message) as info:
        read_prompts_file(path)
    assert "bad.json" in str(info.value)
