"""The synthetic abdominal CT phantom: determinism, presets, overrides and minimum realism."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from samliver.data.case import Case
from samliver.data.phantom import (
    PHANTOM_VERSION,
    list_phantom_presets,
    load_phantom_preset,
    make_phantom,
)

PRESETS = ("organs", "liver-tumor", "tiny")
_CACHE: dict[tuple, Case] = {}


def phantom(seed: int, preset: str, **kw) -> Case:
    """Cached: the realism checks look at the same cases several times."""
    key = (seed, preset, tuple(sorted(kw.items())))
    if key not in _CACHE:
        t0 = time.perf_counter()
        _CACHE[key] = make_phantom(seed, preset, **kw)
        print(f"phantom {preset} seed {seed} {kw}: {time.perf_counter() - t0:.3f} s")
    return _CACHE[key]


def check_realism(case: Case) -> None:
    """The minimum realism every phantom must have, whatever the preset."""
    a, lab = case.image.array, case.label
    assert a.dtype == np.float32 and a.ndim == 3 and np.isfinite(a).all()
    assert lab.dtype == np.uint8 and lab.shape == a.shape
    assert set(np.unique(lab).tolist()) <= {0, 1, 2}
    sz, sy, sx = case.image.spacing
    assert sy == sx and sz >= 1.2 * sx, case.image.spacing
    liver = lab > 0
    assert (lab == 1).sum() > 100
    liver_med = float(np.median(a[lab == 1]))
    assert 20 <= liver_med <= 140, liver_med
    tumour = lab == 2
    if tumour.any():
        assert abs(float(np.median(a[tumour])) - liver_med) >= 10
        # wholly inside the liver: even the tumour grown by one voxel (26-neighbourhood) is liver
        grown = ndimage.binary_dilation(tumour, np.ones((3, 3, 3), bool))
        assert liver[grown].all()
    # air around the body: the outer ring of every slice
    ring = np.concatenate([a[:, 0].ravel(), a[:, -1].ravel(), a[:, :, 0].ravel(), a[:, :, -1].ravel()])
    assert ring.max() < -500
    # liver on the patient's right (low columns) and anterior (low rows) of the spine
    _, rows, cols = np.nonzero(liver)
    X = a.shape[2]
    assert cols.mean() < 0.45 * X
    central = np.abs(np.arange(X) - (X - 1) / 2) * sx < 30
    _, bone_rows, _ = np.nonzero((a > 300) & central[None, None, :])
    assert bone_rows.size and rows.mean() < bone_rows.mean()


@pytest.mark.parametrize("preset,seeds", [("tiny", range(6)), ("organs", (0, 1)), ("liver-tumor", (0, 1, 2))])
def test_realism(preset, seeds):
    for seed in seeds:
        check_realism(phantom(seed, preset))


def test_presets_listed_and_complete():
    assert set(PRESETS) <= set(list_phantom_presets())
    for name in list_phantom_presets():
        cfg = load_phantom_preset(name)
        assert len(cfg["shape"]) == 3 and "liver" in cfg["hu"] and "count" in cfg["tumors"]
    assert load_phantom_preset("organs")["tumors"]["count"] == (0, 0)
    assert load_phantom_preset("tiny")["shape"] == (16, 64, 64)
    lt, org = load_phantom_preset("liver-tumor"), load_phantom_preset("organs")
    # a real domain shift: another phase (brighter liver and vessels), another noise level
    assert lt["phase"] != org["phase"] and lt["hu"]["liver"] > org["hu"]["liver"] + 20
    assert lt["hu"]["portal_vein"] > lt["hu"]["liver"] and lt["noise_hu"] != org["noise_hu"]


def test_case_contents():
    case = phantom(3, "tiny")
    assert case.name == "phantom-tiny-0003" and case.has_liver
    assert case.image.shape == (16, 64, 64)
    assert case.meta["phantom_version"] == PHANTOM_VERSION
    assert case.meta["preset"] == "tiny" and case.meta["seed"] == 3
    assert 1 <= len(case.meta["tumors"]) <= 3
    np.testing.assert_allclose(case.image.direction, np.eye(3))
    # origin: the volume is centred on the LPS origin
    extent = (np.array(case.image.shape[::-1]) - 1) * np.array(case.image.spacing[::-1])
    np.testing.assert_allclose(case.image.origin, -extent / 2, atol=1e-3)


def test_organs_preset_has_no_tumours_and_sees_organs():
    case = phantom(0, "organs")
    assert not (case.label == 2).any() and case.meta["tumors"] == []
    a = case.image.array
    assert (a < -700).any()  # lung bases, bowel or stomach gas inside the body as well as outside
    liver_slices = (case.label > 0).any(axis=(1, 2))
    assert liver_slices.sum() >= 0.5 * a.shape[0]
    # tapering: the liver's cross-section peaks inside, not at the ends of its extent
    area = (case.label > 0).sum(axis=(1, 2))[liver_slices]
    assert area[0] < 0.5 * area.max() and area[-1] < 0.5 * area.max()


def test_deterministic():
    a, b = make_phantom(5, "tiny"), make_phantom(5, "tiny")
    assert np.array_equal(a.image.array, b.image.array) and np.array_equal(a.label, b.label)
    assert a.image.spacing == b.image.spacing and a.meta == b.meta
    c = make_phantom(6, "tiny")
    assert not np.array_equal(a.image.array, c.image.array)
    big1, big2 = phantom(0, "liver-tumor"), make_phantom(0, "liver-tumor")
    assert np.array_equal(big1.image.array, big2.image.array) and np.array_equal(big1.label, big2.label)


def test_overrides():
    case = make_phantom(1, "liver-tumor", shape=(8, 48, 48))
    assert case.image.shape == (8, 48, 48)
    check_realism(case)
    assert case.meta["overrides"] == {"shape": [8, 48, 48]}
    dark = make_phantom(1, "tiny", hu={"liver": 70}, noise_hu=0.0, tumors={"count": (0, 0)})
    assert abs(float(np.median(dark.image.array[dark.label == 1])) - 70) < 8
    assert not (dark.label == 2).any()
    many = make_phantom(2, "tiny", tumors={"count": (3, 3)})
    assert len(many.meta["tumors"]) == 3
    fixed = make_phantom(2, "tiny", slice_mm=(12, 12))
    assert fixed.image.spacing[0] == 12


def test_errors():
    with pytest.raises(ValueError, match="nope"):
        make_phantom(0, "nope")
    with pytest.raises(ValueError, match="bogus"):
        make_phantom(0, "tiny", bogus=1)
    with pytest.raises(ValueError, match="livr"):
        make_phantom(0, "tiny", hu={"livr": 1})
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, "tiny", shape=(4, 64))
    with pytest.raises(ValueError, match="slice_mm"):
        make_phantom(0, "tiny", slice_mm=(5, 2))
    with pytest.raises(ValueError, match="seed"):
        make_phantom(-1, "tiny")
    with pytest.raises(ValueError, match="nope"):
        load_phantom_preset("nope")


def test_tumour_variety():
    """Across seeds of liver-tumor: small and large lesions, hypo- and hyperdense cases."""
    diam, vol_diam, kinds = [], [], set()
    for seed in range(12):
        case = phantom(seed, "liver-tumor")
        a, lab = case.image.array, case.label
        voxel_mm3 = float(np.prod(case.image.spacing))
        tumours = case.meta["tumors"]
        for t in tumours:
            diam.append(t["diameter_mm"])
            kinds.add(t["kind"])
        if tumours:
            # one kind per case; its sign shows in the image
            assert len({t["kind"] for t in tumours}) == 1
            shift = float(np.median(a[lab == 2]) - np.median(a[lab == 1]))
            assert (shift > 0) == (tumours[0]["kind"] == "hyper")
            comps, n = ndimage.label(lab == 2)
            sizes = np.bincount(comps.ravel())[1:]
            vol_diam.append(float(np.cbrt(6 * sizes.max() * voxel_mm3 / np.pi)))
    assert kinds == {"hypo", "hyper"}
    assert min(diam) < 10 and max(diam) > 30
    assert max(vol_diam) > 25  # measured from the label, in mm
