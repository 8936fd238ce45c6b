"""Metrics of samliver.evaluation against hand computations and independent implementations.

References: medpy (``medpy.metric.binary.hd95/assd``) for HD95/ASSD and DeepMind's
surface-distance for NSD; both install through the ``test`` extra
(``pip install -e ".[test]"``). Every mask is seeded and small.
"""

from __future__ import annotations

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from scipy.spatial.distance import pdist

from samliver.evaluation import clinical as C
from samliver.evaluation import lesions as L
from samliver.evaluation import metrics as M

ANISO = [(2.5, 0.8, 1.1), (5.0, 0.7, 0.7), (1.0, 1.0, 1.0)]


# ---------------------------------------------------------------------------------------
# mask builders


def blob(shape: tuple[int, int, int], seed: int, fill: float = 0.35, sigma: float = 2.5) -> np.ndarray:
    """A random smooth blob-like mask: thresholded smoothed Gaussian noise."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1.0 - fill)


def perturbed(mask: np.ndarray, seed: int) -> np.ndarray:
    """A second mask resembling ``mask``: some dilation/erosion and an extra blob."""
    rng = np.random.default_rng(seed)
    out = ndimage.binary_dilation(mask, iterations=int(rng.integers(0, 3)))
    out &= ~blob(mask.shape, seed + 1000, fill=0.15, sigma=2.0)
    return out | blob(mask.shape, seed + 2000, fill=0.05, sigma=2.0)


def ellipsoid(shape, spacing, centre_vox, radii_mm) -> np.ndarray:
    """Voxels whose centre lies inside an axis-aligned ellipsoid (radii in mm)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    total = 0
    for g, s, c, r in zip(grids, spacing, centre_vox, radii_mm):
        total = total + ((g - c) * s / r) ** 2
    return total <= 1.0


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


# ---------------------------------------------------------------------------------------
# overlap: exact against hand computation


def hand_counts(p: np.ndarray, r: np.ndarray) -> tuple[int, int, int]:
    p, r = p.astype(bool).ravel().tolist(), r.astype(bool).ravel().tolist()
    tp = sum(1 for a, b in zip(p, r) if a and b)
    return tp, sum(p), sum(r)


@pytest.mark.parametrize("seed", range(6))
def test_overlap_exact_on_random_masks(seed):
    shape = (9, 14, 11)
    rng = np.random.default_rng(seed)
    if seed % 2:
        p, r = rng.random(shape) < 0.4, rng.random(shape) < 0.3
    else:
        p, r = blob(shape, seed), blob(shape, seed + 50)
    p = p.astype(np.uint8) if seed % 3 == 0 else p  # 0/1 integers are accepted too
    tp, n_p, n_r = hand_counts(p, r)
    assert tp > 0
    assert M.dice(p, r) == float(Fraction(2 * tp, n_p + n_r))
    assert M.iou(p, r) == float(Fraction(tp, n_p + n_r - tp))
    assert M.voe(p, r) == pytest.approx(1 - tp / (n_p + n_r - tp), abs=1e-15)
    assert M.rvd(p, r) == float(Fraction(n_p - n_r, n_r))
    assert M.sensitivity(p, r) == float(Fraction(tp, n_r))
    assert M.precision(p, r) == float(Fraction(tp, n_p))
    assert M.dice(p, r, spacing=ANISO[0]) == M.dice(r, p)  # spacing accepted, symmetric


def test_overlap_hand_built_boxes():
    shape = (6, 6, 6)
    pred = box(shape, (1, 1, 1), (3, 3, 3))  # 8 voxels
    ref = box(shape, (1, 1, 1), (4, 3, 3))  # 12 voxels, contains pred
    assert M.dice(pred, ref) == pytest.approx(16 / 20)
    assert M.iou(pred, ref) == pytest.approx(8 / 12)
    assert M.voe(pred, ref) == pytest.approx(4 / 12)
    assert M.rvd(pred, ref) == pytest.approx(-4 / 12)
    assert M.rvd(ref, pred) == pytest.approx(0.5)
    assert M.sensitivity(pred, ref) == pytest.approx(8 / 12)
    assert M.precision(pred, ref) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.bool_, (3, 4, 5)),
    arrays(np.bool_, (3, 4, 5)),
)
def test_overlap_properties(p, r):
    d, j = M.dice(p, r), M.iou(p, r)
    assert 0.0 <= j <= d <= 1.0
    assert d == M.dice(r, p)
    assert d == pytest.approx(2 * j / (1 + j))
    assert M.voe(p, r) == pytest.approx(1 - j)


def test_global_dice_pools_voxels_across_cases():
    # case 1 is large and good, case 2 tiny and bad: global Dice > mean Dice.
    p1, r1 = box((10, 10, 10), (0, 0, 0), (8, 8, 8)), box((10, 10, 10), (0, 0, 0), (8, 8, 7))
    p2, r2 = box((4, 5, 6), (0, 0, 0), (1, 1, 2)), box((4, 5, 6), (0, 0, 1), (1, 1, 3))
    tp = 8 * 8 * 7 + 1
    n_p, n_r = 512 + 2, 448 + 2
    assert M.global_dice([p1, p2], [r1, r2]) == pytest.approx(2 * tp / (n_p + n_r))
    acc = M.OverlapAccumulator()
    d1, d2 = acc.update(p1, r1), acc.update(p2, r2)
    assert (d1, d2) == (pytest.approx(2 * 448 / 960), pytest.approx(0.5))
    assert acc.mean_dice == pytest.approx((d1 + d2) / 2)
    assert acc.global_dice == pytest.approx(2 * tp / (n_p + n_r))
    assert acc.global_iou == pytest.approx(tp / (n_p + n_r - tp))
    assert acc.global_rvd == pytest.approx((n_p - n_r) / n_r)
    assert acc.n_cases == 2
    # an empty case adds nothing to the pooled counts but counts as Dice 1 per case
    acc.update(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 2), bool))
    assert acc.global_dice == pytest.approx(2 * tp / (n_p + n_r))
    assert acc.dice_per_case[-1] == 1.0
    with pytest.raises(ValueError, match="no cases"):
        M.OverlapAccumulator().global_dice
    with pytest.raises(ValueError, match="same number"):
        M.global_dice([p1], [r1, r2])


# ---------------------------------------------------------------------------------------
# validation


def test_shape_mismatch_names_both_shapes():
    a, b = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 7), bool)
    for f in (M.dice, M.iou, M.rvd):
        with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
            f(a, b)
    for f in (M.assd, M.hd95, M.nsd):
        with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
            f(a, b, (1, 1, 1))
    with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
        L.evaluate_lesions(a, b, (1, 1, 1))


@pytest.mark.parametrize(
    "bad", [(1.0, 1.0), (1, 0, 1), (1, -2, 1), (1, float("nan"), 1), (1, 1, float("inf")), "abc", None]
)
def test_bad_spacing_rejected(bad):
    m = box((4, 4, 4), (1, 1, 1), (3, 3, 3))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(m, m, bad)
    if bad is not None:
        with pytest.raises(ValueError, match="spacing"):
            M.dice(m, m, spacing=bad)
        with pytest.raises(ValueError, match="spacing"):
            L.evaluate_lesions(m, m, bad)


def test_non_binary_and_non_3d_rejected():
    labels = np.zeros((3, 3, 3), np.uint8)
    labels[1, 1, 1] = 2
    with pytest.raises(ValueError, match="binary"):
        M.dice(labels, labels)
    with pytest.raises(ValueError, match="3D"):
        M.hd95(np.ones((3, 3), bool), np.ones((3, 3), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="tolerance_mm"):
        M.nsd(labels == 2, labels == 2, (1, 1, 1), tolerance_mm=-1)
    with pytest.raises(ValueError, match="connectivity"):
        L.label_lesions(labels == 2, connectivity=18)


# ---------------------------------------------------------------------------------------
# surface metrics against independent implementations


def _random_pairs():
    for seed, spacing in zip(range(6), itertools.cycle(ANISO)):
        ref = blob((20, 36, 32), seed)
        yield seed, spacing, perturbed(ref, seed), ref


def boundary_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Brute force: mm from every boundary voxel of ``a`` to the nearest boundary voxel of ``b``."""
    from scipy.spatial import cKDTree

    def surface(m):
        inner = ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    return cKDTree(surface(b)).query(surface(a))[0]


def geometric_pairs():
    """Hand-built (name, pred, ref, spacing): shifted/scaled spheres and ellipsoids, boxes."""
    sp = (2.5, 0.8, 1.1)
    shape = (24, 70, 56)
    c = np.array([12, 35, 28])
    sphere = ellipsoid(shape, sp, c, (20.0, 20.0, 20.0))
    yield "sphere-shift-x", ellipsoid(shape, sp, c + (0, 0, 4), (20.0, 20.0, 20.0)), sphere, sp
    yield "sphere-shift-z", ellipsoid(shape, sp, c + (2, 0, 0), (20.0, 20.0, 20.0)), sphere, sp
    yield "sphere-larger", ellipsoid(shape, sp, c, (23.0, 23.0, 23.0)), sphere, sp
    yield "ellipsoid-vs-sphere", ellipsoid(shape, sp, c + (1, 2, -3), (18.0, 24.0, 16.0)), sphere, sp
    sp2 = (5.0, 0.7, 0.7)
    yield "boxes", box((12, 60, 60), (2, 10, 10), (9, 45, 40)), box((12, 60, 60), (3, 12, 8), (9, 48, 44)), sp2


def test_assd_and_hd95_agree_with_medpy():
    binary = pytest.importorskip("medpy.metric.binary", reason="medpy is the HD95/ASSD reference (test extra)")
    worst = {"assd-random": 0.0, "assd-geometric": 0.0, "hd95-geometric": 0.0}
    for seed, spacing, pred, ref in _random_pairs():
        rel = abs(M.assd(pred, ref, spacing) - binary.assd(pred, ref, voxelspacing=spacing)) / binary.assd(
            pred, ref, voxelspacing=spacing
        )
        worst["assd-random"] = max(worst["assd-random"], rel)
        assert rel < 0.2, (seed, spacing)
    for name, pred, ref, spacing in geometric_pairs():
        for metric, ours, theirs in (
            ("assd-geometric", M.assd(pred, ref, spacing), binary.assd(pred, ref, voxelspacing=spacing)),
            ("hd95-geometric", M.hd95(pred, ref, spacing), binary.hd95(pred, ref, voxelspacing=spacing)),
        ):
            rel = abs(ours - theirs) / theirs
            worst[metric] = max(worst[metric], rel)
            assert rel < 0.2, (metric, name, ours, theirs)
    # MSSD is the plain Hausdorff distance: the same boundary definition as medpy's hd
    _, spacing, pred, ref = next(_random_pairs())
    assert M.mssd(pred, ref, spacing) == pytest.approx(binary.hd(pred, ref, voxelspacing=spacing), rel=1e-5)
    print("max relative difference vs medpy:", worst)


def test_hd95_definition_against_brute_force_and_medpy():
    """HD95 = max of the two directed 95th percentiles (MONAI); medpy pools both directions.

    On irregular random masks the two definitions may differ by more than 20 %, so here
    both are computed by brute force: ours must equal the directed one, medpy the pooled
    one, which must lie between the two directed percentiles.
    """
    binary = pytest.importorskip("medpy.metric.binary", reason="medpy is the HD95/ASSD reference (test extra)")
    for _, spacing, pred, ref in _random_pairs():
        d_pr, d_rp = boundary_distances(pred, ref, spacing), boundary_distances(ref, pred, spacing)
        q_pr, q_rp = np.percentile(d_pr, 95), np.percentile(d_rp, 95)
        assert M.hd95(pred, ref, spacing) == pytest.approx(max(q_pr, q_rp), rel=1e-5)
        assert M.mssd(pred, ref, spacing) == pytest.approx(max(d_pr.max(), d_rp.max()), rel=1e-5)
        assert M.assd(pred, ref, spacing) == pytest.approx(np.concatenate([d_pr, d_rp]).mean(), rel=1e-5)
        pooled = np.percentile(np.concatenate([d_pr, d_rp]), 95)
        assert binary.hd95(pred, ref, voxelspacing=spacing) == pytest.approx(pooled, rel=1e-9)
        assert min(q_pr, q_rp) - 1e-9 <= pooled <= max(q_pr, q_rp) + 1e-9


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # surface-distance uses scipy.ndimage.filters
@pytest.mark.parametrize("tolerance", [1.0, 2.0, 3.5])
def test_nsd_agrees_with_deepmind_surface_distance(tolerance):
    sd = pytest.importorskip("surface_distance", reason="DeepMind surface-distance is the NSD reference (test extra)")
    worst = 0.0
    for _, spacing, pred, ref in _random_pairs():
        dists = sd.compute_surface_distances(ref, pred, spacing)
        theirs = sd.compute_surface_dice_at_tolerance(dists, tolerance)
        ours = M.nsd(pred, ref, spacing, tolerance_mm=tolerance)
        worst = max(worst, abs(ours - theirs))
        assert abs(ours - theirs) < 0.05, (spacing, ours, theirs)
    print(f"max |NSD difference| vs surface-distance at {tolerance} mm:", worst)


@pytest.mark.parametrize(("spacing", "axis"), [((2.0, 0.8, 0.8), 0), ((2.0, 0.8, 0.8), 2), ((1.2, 1.0, 1.0), 1)])
def test_sphere_vs_shifted_sphere(spacing, axis):
    radius, n_shift = 12.0, 2 if axis == 0 else 5
    shift = n_shift * spacing[axis]
    shape = tuple(int(2 * (radius + shift) / s) + 6 for s in spacing)
    centre = np.array([n // 2 for n in shape])
    ref = ellipsoid(shape, spacing, centre, (radius,) * 3)
    moved = centre.copy()
    moved[axis] += n_shift
    pred = ellipsoid(shape, spacing, moved, (radius,) * 3)
    # Continuous spheres: a point of one surface at cos(angle to the shift) = t lies
    # |sqrt(R² - 2Rdt + d²) - R| from the other surface; t is uniform on the sphere.
    t = np.linspace(-1, 1, 200_001)
    expected = float(np.mean(np.abs(np.sqrt(radius**2 - 2 * radius * shift * t + shift**2) - radius)))
    assert expected == pytest.approx(shift / 2, rel=0.02)
    # voxelised surfaces at 2 mm slices deviate up to ~20 % from the continuous value
    assert M.assd(pred, ref, spacing) == pytest.approx(expected, rel=0.25)
    assert M.mssd(pred, ref, spacing) == pytest.approx(shift, rel=1e-5)
    assert 0.85 * shift <= M.hd95(pred, ref, spacing) <= shift + 1e-5
    half, full = M.nsd(pred, ref, spacing, tolerance_mm=shift / 2), M.nsd(pred, ref, spacing, tolerance_mm=shift)
    assert 0.0 < half < full <= 1.0
    assert M.nsd(pred, ref, spacing, tolerance_mm=shift + max(spacing)) == pytest.approx(1.0)
    assert M.nsd(ref, ref, spacing, tolerance_mm=0.0) == pytest.approx(1.0)
    assert M.assd(ref, ref, spacing) == 0.0


# ---------------------------------------------------------------------------------------
# empty masks: the table in samliver.evaluation.metrics

NAN = math.nan
EMPTY_TABLE = {
    # metric: (both empty, ref empty & pred not, pred empty & ref not)
    "dice": (1.0, 0.0, 0.0),
    "iou": (1.0, 0.0, 0.0),
    "voe": (0.0, 1.0, 1.0),
    "rvd": (NAN, NAN, -1.0),
    "sensitivity": (NAN, NAN, 0.0),
    "precision": (NAN, 0.0, NAN),
    "assd": (0.0, math.inf, math.inf),
    "hd95": (0.0, math.inf, math.inf),
    "mssd": (0.0, math.inf, math.inf),
    "nsd": (1.0, 0.0, 0.0),
}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("column", [0, 1, 2], ids=["both-empty", "ref-empty", "pred-empty"])
def test_empty_cases_follow_the_table(column):
    sp = (3.0, 0.7, 0.7)
    empty, some = np.zeros((5, 6, 7), bool), box((5, 6, 7), (1, 1, 1), (3, 4, 4))
    pred, ref = [(empty, empty), (some, empty), (empty, some)][column]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 RuntimeWarning, no MONAI "all 0" warning
        surface = ("assd", "hd95", "mssd", "nsd")
        got = {
            name: getattr(M, name)(pred, ref, sp) if name in surface else getattr(M, name)(pred, ref)
            for name in EMPTY_TABLE
        }
        case = M.case_metrics(pred, ref, sp)
    for name, expected in EMPTY_TABLE.items():
        assert _same(got[name], expected[column]), (name, got[name], expected[column])
        assert _same(case[name], expected[column]), (name, case[name])
    # the docstring's table states the same values
    doc = M.__doc__
    assert "both empty" in doc and "NaN (undefined)" in doc and "inf" in doc


def test_case_metrics_match_individual_functions():
    pred, ref = perturbed(blob((16, 24, 24), 3), 3), blob((16, 24, 24), 3)
    sp = ANISO[1]
    out = M.case_metrics(pred, ref, sp, tolerance_mm=1.5)
    assert out["dice"] == M.dice(pred, ref)
    assert out["hd95"] == M.hd95(pred, ref, sp)
    assert out["nsd"] == M.nsd(pred, ref, sp, 1.5)
    assert out["ref_volume_ml"] == pytest.approx(ref.sum() * np.prod(sp) / 1000)


def test_surface_metrics_accept_masks_touching_the_border():
    sp = (2.0, 1.0, 1.0)
    ref = box((6, 8, 8), (0, 0, 0), (6, 8, 4))
    pred = box((6, 8, 8), (0, 0, 0), (6, 8, 5))
    assert M.mssd(pred, ref, sp) == pytest.approx(1.0)
    assert M.assd(pred, ref, sp) > 0


# ---------------------------------------------------------------------------------------
# RECIST diameter


def brute_force_diameter(mask: np.ndarray, spacing) -> float:
    best = 0.0
    for z in range(mask.shape[0]):
        pts = np.argwhere(mask[z]) * np.array(spacing[1:])
        if len(pts) >= 2:
            best = max(best, float(pdist(pts).max()))
    return best


def test_recist_diameter_of_known_ellipse():
    sp = (3.0, 0.6, 0.75)
    a_mm, b_mm = 15.0, 8.0  # semi-axes along x and y; 15 mm = 20 voxels of 0.75 mm
    shape = (5, 40, 60)
    m = np.zeros(shape, bool)
    m[2] = ellipsoid((1, *shape[1:]), sp, (0, 20, 30), (1.0, b_mm, a_mm))[0]
    # the two voxel centres at (y=20, x=30±20) are in the mask; no pair is farther
    assert L.longest_axial_diameter(m, sp) == pytest.approx(2 * a_mm)
    assert L.lesion_diameters(m, sp) == [pytest.approx(2 * a_mm)]
    # an ellipsoid: the largest slice wins; the diameter ignores the z extent
    e = ellipsoid((21, 40, 60), sp, (10, 20, 30), (30.0, b_mm, a_mm))
    assert L.longest_axial_diameter(e, sp) == pytest.approx(2 * a_mm)
    assert L.size_bin(L.longest_axial_diameter(e, sp)) == ">20mm"


@pytest.mark.parametrize("seed", range(5))
def test_recist_convex_hull_equals_brute_force(seed):
    sp = (2.0, 0.7, 0.9)
    m = blob((6, 30, 30), seed, fill=0.2, sigma=3.0)
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:30, :30]
    u = (xx - 15) * 0.9 * np.cos(angle) + (yy - 15) * 0.7 * np.sin(angle)
    v = -(xx - 15) * 0.9 * np.sin(angle) + (yy - 15) * 0.7 * np.cos(angle)
    m[0] = (u / 9.0) ** 2 + (v / 3.0) ** 2 <= 1  # a rotated ellipse
    assert L.longest_axial_diameter(m, sp) == pytest.approx(brute_force_diameter(m, sp), rel=1e-12)
    assert 18.0 - 2 * 0.9 <= brute_force_diameter(m[:1], sp) <= 18.0


def test_recist_tiny_and_degenerate_lesions():
    sp = (5.0, 0.8, 0.6)
    m = np.zeros((3, 6, 6), bool)
    assert L.longest_axial_diameter(m, sp) == 0.0
    m[1, 2, 2] = True
    assert L.longest_axial_diameter(m, sp) == 0.0  # one voxel: centre to centre
    m[1, 2, 3] = True
    assert L.longest_axial_diameter(m, sp) == pytest.approx(0.6)
    m[:] = False
    m[1, 0:5, 3] = True  # collinear along y
    assert L.longest_axial_diameter(m, sp) == pytest.approx(4 * 0.8)
    m[:] = False
    m[0, 0, 0] = m[1, 1, 1] = True  # diagonal across slices: in-plane distance only
    assert L.longest_axial_diameter(m, sp) == 0.0
    m[:] = False
    m[1, 1:4, 1:5] = True  # 3 x 4 rectangle: corner to corner
    assert L.longest_axial_diameter(m, sp) == pytest.approx(math.hypot(2 * 0.8, 3 * 0.6))


# ---------------------------------------------------------------------------------------
# lesion detection


def test_connectivity():
    m = np.zeros((3, 3, 3), bool)
    m[0, 0, 0] = m[1, 1, 1] = True  # corner contact
    assert L.label_lesions(m)[1] == 1
    assert L.label_lesions(m, connectivity=6)[1] == 2


def test_lesion_detection_hand_built():
    sp = (2.0, 1.0, 1.0)
    shape = (12, 60, 60)
    ref = np.zeros(shape, bool)
    large = box(shape, (2, 5, 5), (8, 30, 30))  # 25x25 voxels in plane: d = 24*sqrt(2) mm
    medium = box(shape, (2, 40, 5), (6, 52, 15))  # 12x10: d = hypot(11, 9) mm
    small = box(shape, (2, 40, 40), (4, 44, 44))  # 4x4: d = 3*sqrt(2) mm
    ref = large | medium | small
    pred_large = box(shape, (2, 6, 5), (8, 30, 30))  # IoU 24/25 with large
    pred_medium = box(shape, (2, 40, 5), (6, 52, 7))  # inside medium: IoU 0.2
    pred_fp = box(shape, (9, 50, 50), (11, 53, 53))  # touches nothing, d = 2*sqrt(2) mm
    pred = pred_large | pred_medium | pred_fp
    rep = L.evaluate_lesions(pred, ref, sp)

    assert (rep.iou.n_ref, rep.iou.n_pred, rep.iou.tp_ref, rep.iou.tp_pred) == (3, 3, 1, 1)
    assert rep.iou.precision == pytest.approx(1 / 3)
    assert rep.iou.recall == pytest.approx(1 / 3)
    assert rep.iou.f1 == pytest.approx(1 / 3)
    assert rep.any_overlap.recall == pytest.approx(2 / 3)
    assert rep.any_overlap.precision == pytest.approx(2 / 3)
    assert rep.any_overlap.f1 == pytest.approx(2 / 3)

    by_diam = {round(les.diameter_mm, 6): les for les in rep.reference}
    d_large, d_medium, d_small = 24 * math.sqrt(2), math.hypot(11, 9), 3 * math.sqrt(2)
    assert sorted(by_diam) == sorted(round(d, 6) for d in (d_large, d_medium, d_small))
    les_large, les_medium, les_small = (by_diam[round(d, 6)] for d in (d_large, d_medium, d_small))
    assert les_large.detected and les_large.overlapped and les_large.size_bin == ">20mm"
    assert les_large.best_iou == pytest.approx(24 / 25)
    assert les_large.dice == pytest.approx(2 * 24 / 49)
    assert les_large.volume_ml == pytest.approx(6 * 25 * 25 * 2.0 / 1000)
    assert les_large.pred_diameter_mm == pytest.approx(math.hypot(23, 24))
    assert les_large.diameter_error_mm == pytest.approx(d_large - math.hypot(23, 24))
    assert not les_medium.detected and les_medium.overlapped and les_medium.size_bin == "10-20mm"
    assert les_medium.best_iou == pytest.approx(0.2)
    assert les_medium.dice == pytest.approx(2 * 0.2 / 1.2)
    assert les_medium.pred_diameter_mm == pytest.approx(math.hypot(11, 1))
    assert not les_small.detected and not les_small.overlapped and les_small.size_bin == "<10mm"
    assert les_small.dice == 0.0
    assert math.isnan(les_small.pred_diameter_mm) and math.isnan(les_small.diameter_error_mm)

    b = rep.by_size
    assert {k: (s.n, s.detected, s.overlapped) for k, s in b.items()} == {
        "<10mm": (1, 0, 0),
        "10-20mm": (1, 0, 1),
        ">20mm": (1, 1, 1),
    }
    assert b["<10mm"].false_positives == 1  # the 3x3 false positive, d = 2.8 mm
    assert b["<10mm"].recall == 0.0 and b["<10mm"].mean_dice == 0.0
    assert b["10-20mm"].recall_any_overlap == 1.0
    assert b[">20mm"].mean_dice == pytest.approx(48 / 49)
    assert rep.mean_diameter_error_mm == pytest.approx(
        (abs(d_large - math.hypot(23, 24)) + abs(d_medium - math.hypot(11, 1))) / 2
    )
    fp = [les for les in rep.predicted if not les.overlapped]
    assert len(fp) == 1 and fp[0].diameter_mm == pytest.approx(2 * math.sqrt(2))

    # pooling two cases adds counts
    pooled = rep.iou + rep.iou
    assert (pooled.n_ref, pooled.tp_ref, pooled.recall) == (6, 2, pytest.approx(1 / 3))
    assert L.pool_size_bins([rep, rep])["10-20mm"].n == 2


def test_iou_exactly_one_half_is_not_detected():
    shape = (3, 10, 10)
    ref = box(shape, (1, 0, 0), (2, 4, 4))  # 16 voxels
    pred = box(shape, (1, 0, 0), (2, 4, 2))  # 8 voxels inside: IoU = 0.5
    rep = L.evaluate_lesions(pred, ref, (1, 1, 1))
    assert rep.reference[0].best_iou == 0.5
    assert rep.iou.tp_ref == 0 and rep.any_overlap.tp_ref == 1
    pred[1, 0, 2] = True  # IoU 9/16 > 0.5
    assert L.evaluate_lesions(pred, ref, (1, 1, 1)).iou.tp_ref == 1


def test_one_prediction_merging_two_lesions():
    shape = (3, 10, 20)
    ref = box(shape, (1, 2, 2), (2, 6, 6)) | box(shape, (1, 2, 10), (2, 6, 14))
    pred = box(shape, (1, 2, 2), (2, 6, 14))  # bridges both
    rep = L.evaluate_lesions(pred, ref, (1, 1, 1))
    assert rep.iou.tp_ref == 0 and rep.any_overlap.tp_ref == 2 and rep.any_overlap.tp_pred == 1
    assert all(les.dice == pytest.approx(2 * 16 / (16 + 48)) for les in rep.reference)
    # a lesion split in two predictions: Dice against their union, diameter of the union
    rep2 = L.evaluate_lesions(ref, pred, (1, 1, 1))
    assert rep2.reference[0].dice == pytest.approx(2 * 32 / (48 + 32))
    assert rep2.reference[0].pred_diameter_mm == pytest.approx(math.hypot(3, 11))


@pytest.mark.parametrize(
    ("has_pred", "has_ref", "precision", "recall", "f1"),
    [(False, False, NAN, NAN, 1.0), (True, False, 0.0, NAN, 0.0), (False, True, NAN, 0.0, 0.0)],
)
def test_lesion_detection_empty_cases(has_pred, has_ref, precision, recall, f1):
    shape = (4, 8, 8)
    lesion = box(shape, (1, 2, 2), (3, 5, 5))
    empty = np.zeros(shape, bool)
    rep = L.evaluate_lesions(lesion if has_pred else empty, lesion if has_ref else empty, (2, 1, 1))
    for counts in (rep.iou, rep.any_overlap):
        assert _same(counts.precision, precision) and _same(counts.recall, recall) and counts.f1 == f1
    assert all(s.n == 0 and math.isnan(s.recall) and math.isnan(s.mean_dice) for s in rep.by_size.values()) or has_ref
    assert math.isnan(rep.mean_diameter_error_mm)


def test_size_bins_boundaries():
    assert L.size_bin(0.0) == "<10mm"
    assert L.size_bin(9.999) == "<10mm"
    assert L.size_bin(10.0) == "10-20mm"
    assert L.size_bin(20.0) == "10-20mm"
    assert L.size_bin(20.001) == ">20mm"
    # lesions with diameters 9, 10, 20 and 21 mm along x at 1 mm spacing
    shape = (3, 12, 100)
    ref = np.zeros(shape, bool)
    x0 = 0
    for d in (9, 10, 20, 21):
        ref[1, 5, x0 : x0 + d + 1] = True
        x0 += d + 3
    rep = L.evaluate_lesions(ref, ref, (1, 1, 1))
    assert sorted(les.diameter_mm for les in rep.reference) == [9, 10, 20, 21]
    assert {k: s.n for k, s in rep.by_size.items()} == {"<10mm": 1, "10-20mm": 2, ">20mm": 1}
    assert all(s.recall == 1.0 and s.mean_dice == 1.0 for s in rep.by_size.values())
    assert rep.mean_diameter_error_mm == 0.0


# ---------------------------------------------------------------------------------------
# clinical


def test_tumour_burden_and_liver_volume_error_on_boxes():
    sp = (2.0, 1.0, 1.0)  # 2 mm³ per voxel
    shape = (14, 14, 14)
    ref = np.zeros(shape, np.uint8)
    ref[0:10, 0:10, 0:10] = 1  # 1000 voxels = 2 mL whole liver
    ref[2:4, 2:7, 2:7] = 2  # 50 voxels of tumour inside it
    pred = np.zeros(shape, np.uint8)
    pred[0:12, 0:10, 0:10] = 1  # 1200 voxels = 2.4 mL
    pred[2:4, 2:7, 2:9] = 2  # 70 voxels
    assert L.volume_ml(ref > 0, sp) == pytest.approx(2.0)
    assert C.liver_volume_error_ml(pred > 0, ref > 0, sp) == pytest.approx(0.4)
    assert C.tumour_burden(ref == 2, ref >= 1) == pytest.approx(0.05)
    assert C.tumour_burden(ref == 2, ref == 1) == pytest.approx(0.05)  # parenchyma-only liver mask
    assert C.tumour_burden_from_labels(ref) == pytest.approx(0.05)
    assert math.isnan(C.tumour_burden(np.zeros(shape, bool), np.zeros(shape, bool)))

    c = C.clinical_metrics(pred, ref, sp)
    assert c["liver_volume_ref_ml"] == pytest.approx(2.0)
    assert c["liver_volume_pred_ml"] == pytest.approx(2.4)
    assert c["liver_volume_error_ml"] == pytest.approx(0.4)
    assert c["liver_volume_abs_error_ml"] == pytest.approx(0.4)
    assert c["tumour_volume_ref_ml"] == pytest.approx(0.1)
    assert c["tumour_volume_pred_ml"] == pytest.approx(0.14)
    assert c["tumour_burden_ref"] == pytest.approx(0.05)
    assert c["tumour_burden_pred"] == pytest.approx(70 / 1200)
    assert c["tumour_burden_abs_error"] == pytest.approx(70 / 1200 - 0.05)
    assert c["max_diameter_ref_mm"] == pytest.approx(math.hypot(4, 4))
    assert c["max_diameter_pred_mm"] == pytest.approx(math.hypot(4, 6))
    assert c["recist_abs_error_mm"] == pytest.approx(math.hypot(4, 6) - math.hypot(4, 4))
    with pytest.raises(ValueError, match="same shape"):
        C.clinical_metrics(pred[:-1], ref, sp)
