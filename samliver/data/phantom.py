"""Synthetic abdominal CT phantoms: the embedded default data set, made from a seed.

``make_phantom(seed, preset)`` returns a `Case`: an axial CT in the canonical LPS orientation
(``(Z, Y, X)`` float32 HU; axis 0 inferior→superior, rows anterior→posterior, columns patient
right→left) with labels 0 background, 1 liver, 2 tumour. The anatomy — body wall, ribs, lung
bases, heart, liver with portal and hepatic veins, gallbladder, spleen, stomach, kidneys,
pancreas, bowel, aorta, IVC, psoas and spine — comes from `samliver.data.phantom_anatomy`;
this module adds liver tumours, parenchymal texture, partial-volume blur and CT noise.

Presets are YAML files in ``configs/phantom/`` (`list_phantom_presets`, `load_phantom_preset`):

- ``organs``: liver and organs without tumours, non-contrast phase, thick slices, low noise
  (a source domain for pretraining).
- ``liver-tumor``: portal-venous phase (brighter liver and vessels), thinner slices, more
  noise, 0–5 tumours per case (the target domain).
- ``tiny``: 16 × 64 × 64 with tumours, for fast tests.

Same ``(seed, preset, overrides)`` → bit-identical output; the preset name is mixed into the
seed, so seed 3 of two presets are different patients. `PHANTOM_VERSION` changes whenever
the generator's output does; it is recorded in ``case.meta``.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from samliver import configs
from samliver.data.case import LIVER, TUMOR, Case
from samliver.data.phantom_anatomy import (Frame, ellipsoid_rho, paint_anatomy, random_rotation, sample_anatomy,
                                           sample_lobes)
from samliver.io import CTVolume

PHANTOM_VERSION = 1

HU_KEYS = ("air", "lung", "fat", "skin", "muscle", "liver", "spleen", "kidney_cortex", "kidney_medulla",
           "pancreas", "stomach_wall", "bowel_wall", "fluid", "heart", "aorta", "ivc", "portal_vein",
           "hepatic_vein", "bone_cortex", "bone_marrow", "disc")
TUMOR_KEYS = ("count", "diameter_mm", "p_hyper", "hypo_delta_hu", "hyper_delta_hu", "p_rim", "rim_delta_hu",
              "irregularity", "elongation")
_RANGES = ("fov_mm", "slice_mm")
_NUMBERS = ("noise_hu", "noise_corr_mm", "blur_mm", "liver_texture_hu", "liver_texture_mm")
PRESET_KEYS = ("description", "phase", "shape", *_RANGES, *_NUMBERS, "hu", "tumors")
_SLICE_RATIO = 1.25  # slice spacing is raised to at least this multiple of the in-plane spacing
_MIN_TUMOR_PX = 4.0  # tumour diameters are raised to at least this many in-plane voxels


def list_phantom_presets() -> list[str]:
    """Names of the phantom presets (``configs/phantom/*.yaml``)."""
    return sorted(p.stem for p in (configs.ROOT / "phantom").glob("*.yaml"))


def load_phantom_preset(name: str) -> dict[str, Any]:
    """The preset ``name`` as a validated dict (see ``configs/phantom/*.yaml`` for the keys).

    Raises ValueError for an unknown name (listing the known ones) or an invalid file.
    """
    if name not in list_phantom_presets():
        raise ValueError(f"unknown phantom preset {name!r}; known: {', '.join(list_phantom_presets())}")
    file = configs.path("phantom", name)
    with open(file, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: a phantom preset must be a mapping")
    missing = [k for k in PRESET_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{file}: missing key {missing[0]!r}")
    return _validated(cfg, str(file))


def make_phantom(seed: int, preset: str = "liver-tumor", **overrides: Any) -> Case:
    """One synthetic abdominal CT with liver and tumour labels, reproducible from ``seed``.

    Args:
        seed: a non-negative integer; the case is a deterministic function of
            ``(seed, preset, overrides)`` and `PHANTOM_VERSION`.
        preset: a name from `list_phantom_presets`.
        **overrides: replace top-level preset keys, e.g. ``shape=(8, 48, 48)`` (slices, rows,
            cols), ``noise_hu=5.0``, ``slice_mm=(3, 3)``; dict-valued keys (``hu``, ``tumors``)
            are merged, e.g. ``hu={"liver": 80}``, ``tumors={"count": (2, 2)}``.

    Returns:
        `Case` named ``phantom-<preset>-<seed:04d>``: image ``(Z, Y, X)`` float32 HU with spacing
        ``(slice, row, col)`` mm (in-plane = field of view / cols; slice ≥ 1.25 × in-plane), origin
        at the volume's centre; label uint8 (0, 1 liver, 2 tumour). ``meta`` holds
        ``phantom_version``, ``preset``, ``seed``, ``overrides``, ``phase`` and ``tumors`` (one dict
        per lesion: centre, ``diameter_mm`` (equivalent sphere), ``kind`` hypo/hyper, ``delta_hu``,
        ``rim``, ``voxels``).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer; got {seed!r}")
    cfg = _with_overrides(load_phantom_preset(preset), overrides, preset)
    rng = np.random.default_rng([int(seed), zlib.crc32(preset.encode())])
    shape = tuple(int(n) for n in cfg["shape"])
    inplane = rng.uniform(*cfg["fov_mm"]) / shape[2]
    spacing = (max(rng.uniform(*cfg["slice_mm"]), _SLICE_RATIO * inplane), inplane, inplane)
    frame = Frame.centred(shape, spacing)  # type: ignore[arg-type]
    anatomy = sample_anatomy(rng, tuple(n * s for n, s in zip(shape, spacing)))  # type: ignore[arg-type]
    hu = {k: float(v) for k, v in cfg["hu"].items()}
    img, liver = paint_anatomy(frame, anatomy, hu)
    label = liver.astype(np.uint8) * np.uint8(LIVER)
    tumors = _add_tumors(rng, frame, img, label, liver, cfg["tumors"], hu["liver"])
    _liver_texture(rng, frame, img, liver, cfg["liver_texture_hu"], cfg["liver_texture_mm"])
    if cfg["blur_mm"] > 0:
        img = ndimage.gaussian_filter(img, [cfg["blur_mm"] / s for s in spacing], mode="nearest")
    noise = rng.standard_normal(shape, dtype=np.float32)
    if cfg["noise_corr_mm"] > 0:
        noise = ndimage.gaussian_filter(noise, [0.0] + [cfg["noise_corr_mm"] / s for s in spacing[1:]])
        noise /= max(float(noise.std()), 1e-6)
    img += np.float32(cfg["noise_hu"]) * noise
    np.clip(img, -1024.0, 3071.0, out=img)
    origin = tuple(float(v) for v in (frame.x[0], frame.y[0], frame.z[0]))
    meta = dict(source="phantom", phantom_version=PHANTOM_VERSION, preset=preset, seed=int(seed),
                overrides=_plain(overrides), phase=cfg["phase"], spacing_mm=list(spacing), tumors=tumors)
    return Case(f"phantom-{preset}-{int(seed):04d}", CTVolume(img, spacing, origin), label, True, meta)


def _add_tumors(rng: np.random.Generator, frame: Frame, img: np.ndarray, label: np.ndarray,
                liver: np.ndarray, t: dict[str, Any], liver_hu: float) -> list[dict[str, Any]]:
    """Paint deformed-ellipsoid tumours that lie wholly inside ``liver``; returns their records.

    One enhancement kind per case (hypo- or hyper-dense, as a patient's metastases tend to
    share); diameters are log-uniform in mm, at least 4 in-plane voxels (smaller ones are lost
    to partial volume and noise). A lesion's centre is drawn where the liver's distance map
    exceeds its largest radius plus one voxel diagonal, so a one-voxel shell of liver surrounds
    it; lesions that fit nowhere are shrunk, then dropped.
    """
    n = int(rng.integers(t["count"][0], t["count"][1] + 1))
    kind = "hyper" if rng.random() < t["p_hyper"] else "hypo"
    lbox = _bbox(liver)
    if n == 0 or lbox is None:
        return []
    edt = ndimage.distance_transform_edt(np.pad(liver[lbox], 1), sampling=frame.spacing)[1:-1, 1:-1, 1:-1]
    margin = float(np.sqrt(np.sum(np.square(frame.spacing)))) + 0.5
    d_hi = t["diameter_mm"][1]
    d_lo = min(max(t["diameter_mm"][0], _MIN_TUMOR_PX * frame.spacing[2]), d_hi)
    out = []
    for _ in range(n):
        d = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi))))
        ratios = np.exp(rng.uniform(*np.log(t["elongation"]), 3))
        ratios /= np.cbrt(np.prod(ratios))
        rot, g = random_rotation(rng), rng.uniform(*t["irregularity"])
        lobes = sample_lobes(rng, g)
        sign = 1.0 if kind == "hyper" else -1.0
        delta = sign * rng.uniform(*t[f"{kind}_delta_hu"])
        rim = kind == "hypo" and rng.random() < t["p_rim"]
        rim_frac, rim_delta, core = rng.uniform(0.08, 0.14), rng.uniform(*t["rim_delta_hu"]), rng.random() < 0.5
        while True:
            r_max = d / 2 * float(ratios.max()) * (1 + g)
            cand = np.flatnonzero(edt > r_max + margin)
            if cand.size or d * 0.8 < d_lo:
                break
            d *= 0.8
        if cand.size == 0:
            continue
        k = np.unravel_index(cand[rng.integers(cand.size)], edt.shape)
        idx = [int(i) + s.start for i, s in zip(k, lbox)]
        c = (frame.z[idx[0]], frame.y[idx[1]], frame.x[idx[2]])
        box = frame.box(c, (r_max + 1,) * 3)
        rho = ellipsoid_rho(frame, box, c, d / 2 * ratios, rot, lobes=lobes)
        m = (rho < 1) & liver[box]
        view = img[box]
        view[m] = liver_hu + delta
        if kind == "hypo" and core and d > 30:
            view[m & (rho < 0.45)] = liver_hu + delta - 20
        rim = rim and d >= 15
        if rim:
            view[m & (rho > 1 - rim_frac)] = liver_hu + rim_delta
        label[box][m] = TUMOR
        out.append(dict(center_voxel=idx, center_mm=[round(float(v), 2) for v in c], diameter_mm=round(d, 2),
                        kind=kind, delta_hu=round(float(delta), 1), rim=bool(rim), voxels=int(m.sum())))
    return out


def _liver_texture(rng: np.random.Generator, frame: Frame, img: np.ndarray, liver: np.ndarray,
                   amp_hu: float, sigma_mm: float) -> None:
    """Add low-frequency filtered noise (std ``amp_hu`` HU, Gaussian ``sigma_mm``) to the liver."""
    box = _bbox(liver)
    if amp_hu <= 0 or box is None:
        return
    field = rng.standard_normal(liver[box].shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, [sigma_mm / s for s in frame.spacing], mode="wrap")
    field *= np.float32(amp_hu / max(float(field.std()), 1e-6))
    m = liver[box]
    img[box][m] += field[m]


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """The smallest index box holding every True voxel of ``mask`` (None if there are none)."""
    found = [np.flatnonzero(np.any(mask, axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
    if found[0].size == 0:
        return None
    return tuple(slice(int(f[0]), int(f[-1]) + 1) for f in found)  # type: ignore[return-value]


def _with_overrides(cfg: dict[str, Any], overrides: dict[str, Any], preset: str) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    for key, value in overrides.items():
        if key not in PRESET_KEYS:
            raise ValueError(f"unknown phantom option {key!r} for preset {preset!r}; known: {', '.join(PRESET_KEYS)}")
        if isinstance(cfg[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"phantom option {key!r} must be a mapping of {', '.join(cfg[key])}")
            cfg[key].update(value)
        else:
            cfg[key] = value
    return _validated(cfg, f"preset {preset!r} with overrides")


def _validated(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """Check keys and value types, normalising sequences to tuples; ValueError names the key."""
    for key in cfg:
        if key not in PRESET_KEYS:
            raise ValueError(f"{where}: unknown key {key!r}")
    for group, keys in (("hu", HU_KEYS), ("tumors", TUMOR_KEYS)):
        if not isinstance(cfg[group], dict):
            raise ValueError(f"{where}: {group!r} must be a mapping")
        for key in set(keys) ^ set(cfg[group]):
            raise ValueError(f"{where}: {'unknown' if key in cfg[group] else 'missing'} key {group}.{key!r}")
        for key, v in cfg[group].items():
            scalar = group == "hu" or key in ("p_hyper", "p_rim")
            cfg[group][key] = _number_or_range(v, f"{where}: {group}.{key}", scalar)
    shape = cfg["shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(n, (int, np.integer)) and n >= 8 for n in shape)):
        raise ValueError(f"{where}: shape must be 3 integers >= 8 (slices, rows, cols); got {shape!r}")
    cfg["shape"] = tuple(int(n) for n in shape)
    for key in _RANGES:
        cfg[key] = _number_or_range(cfg[key], f"{where}: {key}", False)
        if cfg[key][0] <= 0:
            raise ValueError(f"{where}: {key} must be positive mm")
    for key in _NUMBERS:
        cfg[key] = _number_or_range(cfg[key], f"{where}: {key}", True)
        if cfg[key] < 0:
            raise ValueError(f"{where}: {key} must be >= 0")
    lo, hi = cfg["tumors"]["count"]
    if lo < 0 or int(lo) != lo or int(hi) != hi:
        raise ValueError(f"{where}: tumors.count must be two integers >= 0")
    cfg["tumors"]["count"] = (int(lo), int(hi))
    if cfg["tumors"]["diameter_mm"][0] <= 0:
        raise ValueError(f"{where}: tumors.diameter_mm must be positive")
    return cfg


def _number_or_range(v: Any, where: str, scalar: bool) -> Any:
    """A finite number (``scalar``) or an ordered ``(lo, hi)`` pair of them."""
    if scalar:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise ValueError(f"{where} must be a number; got {v!r}")
        return float(v)
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or any(isinstance(x, bool) for x in v)
            or not all(isinstance(x, (int, float, np.number)) and np.isfinite(x) for x in v) or v[0] > v[1]):
        raise ValueError(f"{where} must be a [low, high] range; got {v!r}")
    return (float(v[0]), float(v[1]))


def _plain(value: Any) -> Any:
    """JSON-friendly copy of override values (tuples → lists, numpy scalars → Python)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
