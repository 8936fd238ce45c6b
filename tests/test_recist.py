"""RECIST marks as prompts: `from_recist`, `recist_from_mask`, and the ``recist`` evaluation settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

import samliver
from samliver.errors import PromptError, SamliverError
from samliver.evaluation import evaluate, get_setting
from samliver.evaluation.lesion_sizes import longest_axial_diameter
from samliver.prompts import from_recist, recist_from_mask, recist_prompts

PHANTOM = "phantom:tiny?n=1&seed=100"


def _ellipse(shape, centre, axes, angle):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - centre[0]) * c + (yy - centre[1]) * s
    v = -(xx - centre[0]) * s + (yy - centre[1]) * c
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 < 1


def _blob(seed: int) -> np.ndarray:
    """An irregular, possibly non-convex lesion: a union of random ellipses."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((48, 56), bool)
    for _ in range(rng.integers(1, 4)):
        mask |= _ellipse(mask.shape, rng.uniform(18, 38, 2), rng.uniform(2, 12, 2), rng.uniform(0, np.pi))
    return mask


SHAPES = [_ellipse((40, 50), (25, 20), (15, 6), 0.0), _ellipse((40, 50), (25, 20), (15, 5), 0.6),
          _ellipse((40, 50), (24, 21), (9, 9), 0.0), *[_blob(s) for s in range(6)]]
SPACINGS = [(1.0, 1.0), (0.8, 1.3), (2.0, 0.7)]


def _brute_force(mask, sy, sx):
    """Every pixel pair: centres in mm, distances, and the coordinates as (x, y) pixels."""
    rows, cols = np.nonzero(mask)
    xy = np.stack([cols, rows], axis=1).astype(float)
    mm = xy * [sx, sy]
    return xy, mm, squareform(pdist(mm))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_marks_from_a_mask_against_brute_force(index, spacing):
    mask = SHAPES[index]
    sy, sx = spacing
    marks = recist_from_mask(mask, spacing)
    xy, mm, dist = _brute_force(mask, sy, sx)
    # Long axis: the longest pixel-centre distance, as lesions.longest_axial_diameter measures it.
    assert marks.long_mm == pytest.approx(dist.max(), abs=1e-9)
    assert marks.long_mm == pytest.approx(longest_axial_diameter(mask[None], (1.0, sy, sx)), abs=1e-9)
    for axis, length in ((marks.long_axis, marks.long_mm), (marks.short_axis, marks.short_mm)):
        (x0, y0), (x1, y1) = axis.astype(int)
        assert mask[y0, x0] and mask[y1, x1]
        assert length == pytest.approx(np.hypot((x1 - x0) * sx, (y1 - y0) * sy))
    # Short axis: between the longest exactly perpendicular chord and the longest chord that
    # deviates by less than half the finer pixel along the long axis (the documented bins).
    direction = np.diff(marks.long_axis, axis=0)[0] * [sx, sy] / marks.long_mm
    along = mm @ direction
    spread = np.abs(along[:, None] - along[None, :])
    exact = dist[spread < 1e-9].max()
    loose = dist[spread < min(sx, sy) / 2].max()
    assert exact - 1e-9 <= marks.short_mm <= loose + 1e-9
    assert marks.short_mm <= marks.long_mm
    short_vec = np.diff(marks.short_axis, axis=0)[0] * [sx, sy]
    if marks.short_mm > 0:
        skew = 90 - np.degrees(np.arccos(abs(short_vec @ direction) / marks.short_mm))
        assert skew < 30


def test_plus_sign_lesion_gives_exact_marks_and_prompts():
    mask = np.zeros((30, 40), bool)
    mask[15, 10:31] = True      # a 21-pixel horizontal arm
    mask[11:20, 20] = True      # a 9-pixel vertical arm, crossing at (20, 15)
    marks = recist_from_mask(mask, (1.0, 1.0))
    assert sorted(map(tuple, marks.long_axis.tolist())) == [(10, 15), (30, 15)] and marks.long_mm == 20
    assert sorted(map(tuple, marks.short_axis.tolist())) == [(20, 11), (20, 19)] and marks.short_mm == 8
    p = from_recist(marks.long_axis, marks.short_axis)
    np.testing.assert_array_equal(p.boxes, [[10, 11, 31, 20]])   # pixel-edge box, as boxes_from_mask
    np.testing.assert_array_equal(p.points, [[[20, 15]]])
    np.testing.assert_array_equal(p.point_labels, [[1]])
    assert p.labels.tolist() == [2]
    # with 2 mm rows the vertical arm is 16 mm, the horizontal 20 mm: the same axes
    assert recist_from_mask(mask, (2.0, 1.0)).short_mm == 16


def test_from_recist_box_points_and_margins():
    long_axis, short_axis = ((10, 20), (30, 20)), ((20, 15), (20, 25))
    p = from_recist(long_axis, short_axis, endpoints=True, label=1)
    np.testing.assert_array_equal(p.boxes, [[10, 15, 31, 26]])
    np.testing.assert_array_equal(p.points[0], [[20, 20], [10, 20], [30, 20], [20, 15], [20, 25]])
    assert p.point_labels.tolist() == [[1] * 5] and p.labels.tolist() == [1]
    np.testing.assert_array_equal(from_recist(long_axis, short_axis, margin_px=2).boxes, [[8, 13, 33, 28]])
    # 3 mm on 0.5 mm rows and 1.5 mm columns: 6 rows, 2 columns
    np.testing.assert_array_equal(from_recist(long_axis, short_axis, margin_mm=3, spacing=(0.5, 1.5)).boxes,
                                  [[8, 9, 33, 32]])
    # a short axis that does not reach the long one (a non-convex lesion): its midpoint is clicked
    p = from_recist(long_axis, ((25, 22), (25, 30)))
    np.testing.assert_array_equal(p.points, [[[25, 26]]])
    # an oblique lesion: the ellipse of the diameters (a = 10 sqrt 2, b = 5 sqrt 2 at 45 degrees)
    # reaches sqrt(a^2 + b^2) / sqrt 2 = sqrt 125 beyond the centre on each axis, past the lines
    oblique = ((10, 10), (30, 30)), ((15, 25), (25, 15))
    reach = np.sqrt(125)
    np.testing.assert_allclose(from_recist(*oblique).boxes, [[20 - reach, 20 - reach, 21 + reach, 21 + reach]],
                               rtol=1e-6)
    np.testing.assert_array_equal(from_recist(*oblique, ellipse=False).boxes, [[10, 10, 31, 31]])
    # one-pixel lesion: zero-length marks give a one-pixel box
    np.testing.assert_array_equal(from_recist(((5, 6), (5, 6)), ((5, 6), (5, 6))).boxes, [[5, 6, 6, 7]])


@pytest.mark.parametrize("call, message", [
    (lambda: from_recist([(1, 2)], ((0, 0), (1, 1))), r"long_axis: expected \(\(x0, y0\), \(x1, y1\)\)"),
    (lambda: from_recist(((0, 0), (9, 0)), ((4, 1), (4, float("nan")))), "short_axis: contains NaN"),
    (lambda: from_recist(((0, 0), ("a", 0)), ((4, 1), (4, 2))), "long_axis: expected"),
    (lambda: from_recist(((10, 20), (20, 20)), ((15, 10), (15, 30))),
     r"short_axis: 20.0 px is longer than long_axis \(10.0 px\); are the two marks swapped"),
    (lambda: from_recist(((10, 20), (30, 20)), ((12, 21), (18, 22))), "short_axis: 81 degrees off perpendicular"),
    (lambda: from_recist(((10, 20), (30, 20)), ((50, 15), (50, 25))), "lies beside long_axis"),
    (lambda: from_recist(((10, 20), (30, 20)), ((20, 15), (20, 25)), margin_mm=2), "margin_mm needs spacing"),
    (lambda: from_recist(((10, 20), (30, 20)), ((20, 15), (20, 25)), margin_px=-1), "margin must be"),
    (lambda: from_recist(((10, 20), (30, 20)), ((20, 15), (20, 25)), spacing=(0, 1)), "spacing must be"),
    (lambda: recist_from_mask(np.zeros((8, 8), bool)), "the mask is empty"),
    (lambda: recist_from_mask(np.ones((2, 8, 8), bool)), r"expected one \(H, W\) slice"),
])
def test_bad_marks_raise_one_line_errors_naming_the_value(call, message):
    with pytest.raises(PromptError, match=message) as err:
        call()
    assert isinstance(err.value, SamliverError) and "\n" not in str(err.value)


def test_lengths_are_checked_in_mm_with_anisotropic_spacing():
    long_axis, short_axis = ((10, 10), (20, 10)), ((15, 7), (15, 13))   # 10 px long, 6 px short
    assert from_recist(long_axis, short_axis).boxes.tolist() == [[10, 7, 21, 14]]
    with pytest.raises(PromptError, match=r"short_axis: 12.0 mm is longer than long_axis \(10.0 mm\)"):
        from_recist(long_axis, short_axis, spacing=(2.0, 1.0))          # rows of 2 mm: 12 mm short axis


def test_recist_prompts_one_object_per_lesion_with_its_label():
    labels = np.zeros((40, 60), np.uint8)
    labels[_ellipse(labels.shape, (15, 20), (10, 6), 0.3)] = 1
    labels[_ellipse(labels.shape, (45, 20), (7, 4), 1.2)] = 2
    p = recist_prompts(labels, spacing=(0.9, 0.7), endpoints=True)
    assert p.labels.tolist() == [1, 2] and p.points.shape == (2, 5, 2)
    for i, cls in enumerate((1, 2)):
        marks = recist_from_mask(labels == cls, (0.9, 0.7))
        one = from_recist(marks.long_axis, marks.short_axis, spacing=(0.9, 0.7), endpoints=True, label=cls)
        np.testing.assert_array_equal(p.boxes[i], one.boxes[0])
        np.testing.assert_array_equal(p.points[i], one.points[0])
        # the ellipse of the two diameters holds (nearly) the whole elliptical lesion
        rows, cols = np.nonzero(labels == cls)
        inside = (cols >= p.boxes[i, 0]) & (cols < p.boxes[i, 2]) & (rows >= p.boxes[i, 1]) & (rows < p.boxes[i, 3])
        assert inside.mean() > 0.97
    assert recist_prompts(np.zeros((5, 5), np.uint8)) is None


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return samliver.load_model("samliver_tiny", checkpoint="random")


def test_recist_settings_run_in_an_evaluation(tiny_model, monkeypatch):
    from samliver import propagation

    seen = []
    original = propagation.propagate_boxes

    def spy(model, hu, key, prompts, *args, **kwargs):
        seen.append((key, prompts))
        return original(model, hu, key, prompts, *args, **kwargs)
    monkeypatch.setattr(propagation, "propagate_boxes", spy)
    result = evaluate(tiny_model, PHANTOM, "recist,recist-ends,recist-propagate", None, figures=False)
    assert {(r["setting"], r["target"]) for r in result.rows} == {
        (s, t) for s in ("recist", "recist-ends", "recist-propagate") for t in ("liver", "tumour")}
    assert all(np.isfinite(float(r["dice"])) for r in result.rows)
    # recist-propagate: each 3D object is prompted on its RECIST slice (longest axial diameter)
    case = samliver.data.load_dataset(PHANTOM)[0]
    from scipy import ndimage
    expected = []
    for ref in (case.label >= 1, case.label == 2):
        components, n = ndimage.label(ref, structure=np.ones((3, 3, 3)))
        for k in range(1, n + 1):
            obj = components == k
            diam = [longest_axial_diameter(obj[z][None], (1.0, *case.image.spacing[1:])) for z in range(len(obj))]
            expected.append(int(np.argmax(diam)))
    assert [key for key, _ in seen] == expected
    assert all(p.boxes is not None and p.points.shape[1] == 1 for _, p in seen)


def test_recist_setting_prompts_only_reference_slices(tiny_model):
    from samliver.evaluation.settings import CaseContext
    from samliver.inference import SliceEncoder

    case = samliver.data.load_dataset(PHANTOM)[0]
    ctx = CaseContext(tiny_model, case.name, case.image.array, case.image.spacing, case.label,
                      SliceEncoder(tiny_model))
    setting = get_setting("recist")
    pred = setting.predict(ctx, "tumour")
    ref = case.label == 2
    assert not pred[~ref.any(axis=(1, 2))].any()
    z = int(np.argmax(ref.sum(axis=(1, 2))))
    prompts = recist_prompts(ref[z], spacing=case.image.spacing[1:])
    from samliver.inference import decode_objects
    emb = ctx.embeddings([z])[z]
    direct = decode_objects(tiny_model, emb, prompts.check_inside(*ref.shape[1:]), ref.shape[1:]).masks.any(axis=0)
    np.testing.assert_array_equal(pred[z], direct)
