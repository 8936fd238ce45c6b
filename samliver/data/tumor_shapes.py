"""Geometry and texture helpers for synthetic liver tumours (see `samliver.data.tumor_synthesis`).

Everything here works on a small crop ``(A, B, C)`` of a volume whose voxel size per array axis is
``spacing`` (mm); sizes and smoothing scales are given in mm and converted per axis, so anisotropic
grids (e.g. 0.7 x 0.7 x 5 mm) get round lesions in world space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

TUMOR = 2  # label value (samliver.data.case.TUMOR)

Spacing = Sequence[float]
SUPPORT_VOXELS = 3  # changes stay within this Euclidean voxel distance of a lesion's label


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation matrix ``(3, 3)`` (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def axis_offsets_mm(shape: Sequence[int], center: Sequence[int], spacing: Spacing) -> list[np.ndarray]:
    """Per-axis 1D offsets (mm) of voxel centres from ``center`` (voxel index), one array per axis."""
    return [(np.arange(n) - c) * float(s) for n, c, s in zip(shape, center, spacing)]


def smooth_random_field(
    offsets: list[np.ndarray], extent_mm: float, rng: np.random.Generator, n_ctrl: int = 4
) -> np.ndarray:
    """A smooth random vector field ``(3, A, B, C)`` with max vector length 1 (unitless).

    The field is a sum of separable Gaussian bumps on an ``n_ctrl**3`` lattice spanning
    ``[-extent_mm, extent_mm]`` around the centre, with random normal weights: a low-frequency
    displacement of the kind used for elastic deformation, evaluated with three small tensor
    products (cheap even for large crops).
    """
    ctrl = np.linspace(-extent_mm, extent_mm, n_ctrl)
    width = max(2.0 * extent_mm / max(n_ctrl - 1, 1), 1e-3)
    bases = [np.exp(-0.5 * ((off[:, None] - ctrl[None, :]) / width) ** 2) for off in offsets]
    comps = []
    for _ in range(3):
        coef = rng.standard_normal((n_ctrl, n_ctrl, n_ctrl))
        comps.append(np.einsum("ai,bj,ck,ijk->abc", *bases, coef, optimize=True))
    field = np.stack(comps).astype(np.float32)
    norm = float(np.sqrt((field**2).sum(axis=0)).max())
    return field / norm if norm > 0 else field


def deformed_ellipsoid(
    shape: Sequence[int],
    center: Sequence[int],
    spacing: Spacing,
    semi_axes_mm: Sequence[float],
    rotation: np.ndarray,
    deformation_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A randomly rotated ellipsoid, elastically deformed, as a bool mask of ``shape``.

    Args:
        shape: crop shape ``(A, B, C)`` in voxels.
        center: the lesion centre as a voxel index in the crop; it is always inside the mask.
        spacing: voxel size per array axis, mm.
        semi_axes_mm: the ellipsoid's three semi-axes, mm.
        rotation: ``(3, 3)`` rotation from the ellipsoid's frame to the array-axis frame (mm).
        deformation_mm: largest displacement of the smooth random field, mm (0 = plain ellipsoid).
        rng: random source for the deformation.

    A voxel at offset ``p`` (mm) is inside when ``p + d(p)`` lies in the ellipsoid, ``d`` being the
    smooth field; so the surface moves by at most ``deformation_mm``.
    """
    offsets = axis_offsets_mm(shape, center, spacing)
    grids = np.meshgrid(*offsets, indexing="ij", sparse=True)
    pos = [np.broadcast_to(g, tuple(shape)).astype(np.float32) for g in grids]
    if deformation_mm > 0:
        extent = float(max(semi_axes_mm)) + deformation_mm
        field = smooth_random_field(offsets, extent, rng)
        pos = [p + deformation_mm * f for p, f in zip(pos, field)]
    radius2 = np.zeros(tuple(shape), np.float32)
    for k in range(3):
        along = rotation[0, k] * pos[0] + rotation[1, k] * pos[1] + rotation[2, k] * pos[2]
        radius2 += (along / float(semi_axes_mm[k])) ** 2
    mask = radius2 <= 1.0
    mask[tuple(int(c) for c in center)] = True
    return mask


def filtered_noise(shape: Sequence[int], spacing: Spacing, scale_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise ``(A, B, C)`` float32 with zero mean and unit SD.

    ``scale_mm`` is the smoothing SD in mm (at least half a voxel along each axis): the grain
    size of the lesion's texture.
    """
    sigma = [max(scale_mm / float(s), 0.5) for s in spacing]
    noise = ndi.gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma, mode="reflect")
    sd = float(noise.std())
    return (noise - float(noise.mean())) / sd if sd > 0 else noise


def blur(mask: np.ndarray, sigma_mm: float, spacing: Spacing) -> np.ndarray:
    """Gaussian blur of a bool/float mask with SD ``sigma_mm`` (mm, converted per axis), float32."""
    values = mask.astype(np.float32)
    if sigma_mm <= 0:
        return values
    return ndi.gaussian_filter(values, [sigma_mm / float(s) for s in spacing], mode="constant", truncate=3.0)


def inner_shell(mask: np.ndarray, thickness_mm: float, spacing: Spacing) -> np.ndarray:
    """Voxels of ``mask`` within ``thickness_mm`` (mm) of its outside; at least its outer voxel layer."""
    depth = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return mask & (depth <= max(thickness_mm, float(min(spacing))))


def component_at(mask: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The 26-connected component of bool ``mask`` that holds voxel ``index`` (empty if none)."""
    labels, _ = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    value = labels[tuple(int(i) for i in index)]
    return labels == value if value else np.zeros_like(mask)


def equivalent_diameter_mm(mask: np.ndarray, spacing: Spacing) -> float:
    """Diameter (mm) of the sphere with the same volume as ``mask``'s voxels."""
    volume = float(np.count_nonzero(mask)) * float(np.prod([float(s) for s in spacing]))
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


@dataclass(frozen=True)
class SynthesizedTumor:
    """One inserted lesion. ``center`` is a ``(Z, Y, X)`` voxel index; sizes in mm, HU in HU."""

    center: tuple[int, int, int]
    diameter_mm: float  # nominal (before deformation and clipping to the liver)
    equivalent_diameter_mm: float  # of the labelled voxels
    voxels: int
    hyperdense: bool
    contrast_hu: float  # intended median(lesion) - local parenchyma median, signed
    parenchyma_hu: float  # local parenchyma median (input CT)
    rim: bool
    vessel_overlap: float  # fraction of the lesion's voxels on vessel voxels
    extent_mm: float  # largest distance of a lesion voxel from the centre


class LesionPlacer:
    """Places and paints lesions in one liver bounding box (arrays are views of that box).

    Holds what placement needs: depth below the liver surface (mm), vessel voxels, the liver's
    median HU. ``opts`` is a checked option dict (`tumor_synthesis.validate_options`).
    """

    def __init__(self, hu: np.ndarray, par: np.ndarray, existing: np.ndarray, sp: tuple, opts: dict) -> None:
        self.hu, self.par, self.sp, self.opts = hu, par, sp, opts
        self.depth = depth_mm(par | existing, sp)  # mm to the nearest non-liver voxel
        self.vessel = np.zeros_like(par)
        if opts["vessel_percentile"] is not None:
            smooth = ndi.gaussian_filter(hu, [max(1.0 / s, 0.5) for s in sp])
            self.vessel = par & (smooth > np.percentile(smooth[par], opts["vessel_percentile"]))
        self.clear_of_existing = depth_mm(~existing, sp) if existing.any() else None
        self.free = par & ~ndi.binary_dilation(self.vessel)
        self.median = float(np.median(hu[par]))
        self.gap_mm = (2 * SUPPORT_VOXELS + 2) * max(sp)  # keeps lesions and their margins apart

    def place(self, rng: np.random.Generator, out_hu: np.ndarray, out_label: np.ndarray,
              done: list[SynthesizedTumor]) -> SynthesizedTumor | None:
        """Draw one lesion (size, density, rim), find room for it, paint it into ``out_hu`` /
        ``out_label`` (views of the box). None when no room is found even at a smaller size."""
        o, sp = self.opts, self.sp
        lo, hi = o["diameter_mm"][rng.choice(len(o["size_mix"]), p=o["size_mix"])]
        diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        hyper = bool(rng.random() < o["hyperdense_probability"])
        delta = float(rng.uniform(*o["contrast_hu"])) * (1.0 if hyper else -1.0)
        rim = (not hyper) and bool(rng.random() < o["rim_probability"])
        for attempt in range(4):  # shrink when the liver has no room for this size
            r = 0.5 * diameter * 0.75**attempt
            aspect = np.exp(rng.uniform(-0.25, 0.25, 3))
            axes = r * aspect / np.cbrt(aspect.prod())
            extent = float(axes.max()) + o["deformation"] * r + max(sp)
            best = None
            for c in self._candidates(rng, r, extent, done):
                trial = self._shape(rng, c, axes, r, extent)
                if best is None or trial[-1] < best[-1]:
                    best = trial
                if trial[-1] <= 0.05:
                    break
            if best is not None:
                return self._paint(rng, out_hu, out_label, best, diameter, delta, hyper, rim)
        return None

    def _candidates(self, rng: np.random.Generator, r: float, extent: float, done: list) -> list[tuple]:
        """Up to 12 random centres: parenchyma off vessels, >= boundary_mm deep (preferably >= r / 2),
        with ``gap_mm`` clear between this lesion's reach and every other lesion's."""
        ok = self.free & (self.depth >= self.opts["boundary_mm"])
        for pool in (ok & (self.depth >= 0.5 * r), ok, self.par & (self.depth >= 0.5 * self.depth.max())):
            flat = np.flatnonzero(pool)
            if flat.size:
                break
        picks = []
        for i in rng.permutation(flat)[:400]:
            c = np.unravel_index(i, self.par.shape)
            if self.clear_of_existing is not None and self.clear_of_existing[c] < extent + self.gap_mm:
                continue
            if all(np.linalg.norm(np.subtract(c, t.center) * self.sp) >= extent + t.extent_mm + self.gap_mm
                   for t in done):
                picks.append(tuple(int(v) for v in c))
            if len(picks) == 12:
                break
        return picks

    def _shape(self, rng: np.random.Generator, c: tuple, axes: np.ndarray, r: float, extent: float) -> tuple:
        """Build one candidate lesion at voxel ``c``: (crop, centre in crop, blend shape, label, blur SD mm,
        fraction on vessels). The label is the shape's piece of parenchyma connected to the centre."""
        sp, o = self.sp, self.opts
        sigma = min(o["edge_blur_mm"], 0.35 * r)
        half = [math.ceil((extent + max(3 * sigma, 8.0)) / s) + SUPPORT_VOXELS + 1 for s in sp]
        crop = tuple(slice(max(ci - h, 0), min(ci + h + 1, n)) for ci, h, n in zip(c, half, self.par.shape))
        local = tuple(ci - s.start for ci, s in zip(c, crop))
        shape = deformed_ellipsoid([s.stop - s.start for s in crop], local, sp, axes,
                                   random_rotation(rng), o["deformation"] * r, rng)
        par = self.par[crop]
        lesion = component_at(shape & par, local)
        overlap = float(np.count_nonzero(lesion & self.vessel[crop])) / max(np.count_nonzero(lesion), 1)
        return crop, local, shape & ~(par & ~lesion), lesion, sigma, overlap

    def _paint(self, rng: np.random.Generator, out_hu: np.ndarray, out_label: np.ndarray, trial: tuple,
               diameter: float, delta: float, hyper: bool, rim: bool) -> SynthesizedTumor:
        """Blend the lesion into ``out_hu`` (changes only where the weight is > 0) and label it."""
        crop, local, shape, lesion, sigma, overlap = trial
        sp, o = self.sp, self.opts
        orig, par = self.hu[crop], self.par[crop]
        ring = par & ~shape & (ndi.distance_transform_edt(~shape, sampling=sp) <= max(15.0, 2 * max(sp)))
        background = float(np.median(orig[ring])) if np.count_nonzero(ring) >= 30 else self.median
        dist = ndi.distance_transform_edt(~lesion)  # voxel units, as the bit-identity promise
        taper = np.clip((SUPPORT_VOXELS - dist) / (0.5 * SUPPORT_VOXELS), 0.0, 1.0)
        weight = np.where(par, np.maximum(blur(shape, sigma, sp), lesion * 0.5) * taper, 0.0)
        detail = orig - ndi.gaussian_filter(orig, 1.0)  # the scanner's own fine noise, kept
        texture = float(rng.uniform(*o["texture_hu"])) * filtered_noise(orig.shape, sp, rng.uniform(1.0, 3.0), rng)
        core = np.ones_like(weight)
        target = background + delta + texture + detail
        shell = inner_shell(lesion, 2.0, sp) if rim else None
        if shell is not None and np.count_nonzero(shell) <= 0.45 * np.count_nonzero(lesion):
            core = 1.0 - blur(shell, 0.5 * min(sp), sp)
            target = core * target + (1 - core) * (background + rng.uniform(*o["rim_hu"]) + detail)
        else:
            rim = False
        # calibrate: the lesion's median HU sits at background + delta, as drawn
        w, k, t, x = weight[lesion], core[lesion], target[lesion], orig[lesion]
        shift = 0.0
        for _ in range(10):
            err = background + delta - float(np.median(x + w * (t + shift * k - x)))
            if abs(err) < 0.25:
                break
            shift += err / max(float(np.median(w * k)), 0.2)
        blended = orig + weight * (target + shift * core - orig)
        changed = weight > 0
        out_hu[crop][changed] = blended[changed].astype(np.float32)
        out_label[crop][lesion] = TUMOR
        reach = float(np.sqrt((((np.argwhere(lesion) - local) * sp) ** 2).sum(axis=1)).max())
        return SynthesizedTumor(tuple(int(a + s.start) for a, s in zip(local, crop)), diameter,
                                equivalent_diameter_mm(lesion, sp), int(np.count_nonzero(lesion)),
                                hyper, delta, background, rim, overlap, reach)


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` padded by one voxel (clipped to the array)."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, mask.shape[axis])))
    return tuple(box)


def depth_mm(mask: np.ndarray, sp: tuple) -> np.ndarray:
    """Distance (mm) from each ``mask`` voxel to the nearest voxel outside it (array edges count as outside)."""
    return ndi.distance_transform_edt(np.pad(mask, 1), sampling=sp)[1:-1, 1:-1, 1:-1]
