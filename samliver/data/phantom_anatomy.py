"""Organ shapes for the synthetic abdominal CT phantom (used by `samliver.data.phantom`).

Geometry is in millimetres in a patient frame centred on the volume, in LPS: ``x`` towards
the patient's left, ``y`` towards posterior, ``z`` towards superior, so voxel ``[k, j, i]`` of
a ``(Z, Y, X)`` array sits at ``(z[k], y[j], x[i])``. Points and vectors are ``(z, y, x)``.
`sample_anatomy` draws one patient (sizes, positions, vessel and bowel paths) from a
generator; `paint_anatomy` rasterises it into an ideal, noise-free HU image and a liver mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """Voxel-centre coordinates (mm) of a ``(Z, Y, X)`` grid centred on the origin."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Frame:
        axes = [((np.arange(n) - (n - 1) / 2.0) * s).astype(np.float32) for n, s in zip(shape, spacing)]
        return cls(axes[0], axes[1], axes[2], tuple(float(s) for s in spacing))  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z.size, self.y.size, self.x.size

    def box(self, center: Any, half: Any) -> tuple[slice, slice, slice] | None:
        """Index box covering ``center ± half`` (mm, zyx), clipped to the grid; None if empty."""
        out = []
        for ax, c, h, s in zip((self.z, self.y, self.x), center, half, self.spacing):
            lo = max(int(np.floor((c - h - ax[0]) / s)), 0)
            hi = min(int(np.ceil((c + h - ax[0]) / s)) + 1, ax.size)
            if lo >= hi:
                return None
            out.append(slice(lo, hi))
        return tuple(out)  # type: ignore[return-value]

    def offsets(self, box: tuple[slice, slice, slice], center: Any) -> tuple[np.ndarray, ...]:
        """Broadcastable ``(dz, dy, dx)`` mm offsets of the box's voxels from ``center``."""
        return ((self.z[box[0]] - np.float32(center[0]))[:, None, None],
                (self.y[box[1]] - np.float32(center[1]))[None, :, None],
                (self.x[box[2]] - np.float32(center[2]))[None, None, :])


def rot_z(angle: float) -> np.ndarray:
    """Rotation about the z axis (radians) as a zyx matrix whose columns are the local axes."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (from a random unit quaternion)."""
    w, a, b, c = _unit(rng, 4)
    return np.array([[1 - 2 * (b * b + c * c), 2 * (a * b - c * w), 2 * (a * c + b * w)],
                     [2 * (a * b + c * w), 1 - 2 * (a * a + c * c), 2 * (b * c - a * w)],
                     [2 * (a * c - b * w), 2 * (b * c + a * w), 1 - 2 * (a * a + b * b)]])


def _unit(rng: np.random.Generator, n: int = 3) -> np.ndarray:
    v = rng.standard_normal(n)
    return v / max(float(np.linalg.norm(v)), 1e-9)


def sample_waves(rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float],
                 amplitude: float) -> list[tuple[np.ndarray, float, float]]:
    """Plane waves ``(k (rad/mm, zyx), phase, amplitude)`` for a smooth surface wobble."""
    return [(_unit(rng) * 2 * np.pi / rng.uniform(*wavelength_mm), rng.uniform(0, 2 * np.pi),
             amplitude * rng.uniform(0.5, 1.0)) for _ in range(n)]


def sample_lobes(rng: np.random.Generator, irregularity: float,
                 n: int = 4) -> list[tuple[np.ndarray, int, float, float]]:
    """Low-frequency radial noise on the unit sphere; its total amplitude is ``irregularity``."""
    w = rng.uniform(0.5, 1.0, n)
    w *= irregularity / w.sum()
    return [(_unit(rng), int(rng.integers(1, 4)), rng.uniform(0, 2 * np.pi), float(w[i])) for i in range(n)]


def ellipsoid_rho(frame: Frame, box: tuple[slice, slice, slice], center: Any, radii: Any,
                  rot: np.ndarray | None = None, waves: list | None = None,
                  lobes: list | None = None) -> np.ndarray:
    """Normalised radius of a rotated, deformed ellipsoid over ``box``: < 1 inside.

    ``radii`` are mm along the columns of ``rot`` (zyx); ``waves`` wobble the surface in space,
    ``lobes`` deform it radially (fraction of the radius) as a function of direction.
    """
    d = frame.offsets(box, center)
    if rot is None:
        q = list(d)
    else:
        r32 = rot.astype(np.float32)
        q = [d[0] * r32[0, k] + d[1] * r32[1, k] + d[2] * r32[2, k] for k in range(3)]
    n = [q[k] / np.float32(radii[k]) for k in range(3)]
    rho = np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
    scale = None
    if lobes:
        inv = 1.0 / np.maximum(rho, np.float32(1e-6))
        for u, m, phase, amp in lobes:
            cos_t = (n[0] * np.float32(u[0]) + n[1] * np.float32(u[1]) + n[2] * np.float32(u[2])) * inv
            term = np.float32(amp) * np.cos(np.float32(np.pi * m) * cos_t + np.float32(phase))
            scale = 1.0 + term if scale is None else scale + term
    if waves:
        for k, phase, amp in waves:
            arg = d[0] * np.float32(k[0]) + d[1] * np.float32(k[1]) + d[2] * np.float32(k[2]) + np.float32(phase)
            term = np.float32(amp) * np.sin(arg)
            scale = 1.0 + term if scale is None else scale + term
    return rho if scale is None else rho / scale


def capsule_dist(frame: Frame, box: tuple[slice, slice, slice], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance (mm) of the box's voxels from the segment ``p0``–``p1``."""
    v = (np.asarray(p1, float) - np.asarray(p0, float)).astype(np.float32)
    d = frame.offsets(box, p0)
    t = np.clip((d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / max(float(v @ v), 1e-6), 0.0, 1.0)
    return np.sqrt((d[0] - t * v[0]) ** 2 + (d[1] - t * v[1]) ** 2 + (d[2] - t * v[2]) ** 2)


def segment_box(frame: Frame, p0: np.ndarray, p1: np.ndarray, r: float) -> tuple[slice, slice, slice] | None:
    return frame.box((np.asarray(p0) + p1) / 2, np.abs(np.asarray(p1) - p0) / 2 + r)


def _tree(rng: np.random.Generator, p: np.ndarray, d: np.ndarray, r: float, depth: int,
          kind: str, out: list) -> None:
    """A random binary vessel tree from ``p`` along unit ``d``; appends ``(p0, p1, r, kind)``."""
    end = p + d * (rng.uniform(3.0, 5.0) * r + 10.0)
    out.append((p, end, r, kind))
    if depth == 0 or r < 2.2:
        return
    for sign in (1.0, -1.0):
        e = _unit(rng)
        e -= d * (e @ d)
        e /= max(float(np.linalg.norm(e)), 1e-9)
        a = sign * rng.uniform(0.35, 0.8)
        _tree(rng, end, np.cos(a) * d + np.sin(a) * e, r * rng.uniform(0.62, 0.8), depth - 1, kind, out)


def sample_anatomy(rng: np.random.Generator, extent_mm: tuple[float, float, float]) -> dict[str, Any]:
    """Draw one patient's anatomy (all mm, zyx) for a volume of ``extent_mm`` (z, y, x)."""
    u = rng.uniform
    ez, ey, ex = extent_mm
    A, B = min(u(135, 168), 0.46 * ex), u(98, 120)
    B_ant, yb = B * u(0.95, 1.1), u(-4.0, 10.0)
    f = min(1.0, (0.47 * ey - yb) / B, (0.47 * ey + yb) / B_ant)
    B, B_ant = B * f, B_ant * f
    fat, muscle = u(8.0, 30.0), u(8.0, 13.0)
    a: dict[str, Any] = dict(A=A, B=B, B_ant=B_ant, yb=yb, p_ant=u(1.9, 2.3), p_post=u(2.3, 3.0),
                             harm=[(n, u(-0.02, 0.02), u(0, 2 * np.pi)) for n in (2, 3, 4)], fat=fat, muscle=muscle)
    # organs scale with the abdominal cavity (body minus fat and muscle), not the body
    sx, sy = (A - fat - muscle) / 122.0, (B + B_ant - 2 * (fat + muscle)) / 163.0
    y0 = yb + (B - B_ant + 0.6 * fat + 0.4 * muscle) / 2 - 6.8
    Y = lambda v: y0 + v * sy  # noqa: E731  cavity-relative AP position → mm
    zc, Ls, Lz = u(0.0, 20.0), u(0.88, 1.12), u(0.9, 1.1)
    up, down = 65.0 * Lz, 85.0 * Lz
    a["liver"] = dict(zc=zc, up=up, down=down, cy=Y(-8 + u(-6, 6)), cx=-60 * sx + u(-6, 6), ry=84 * sy * Ls,
                      rx=74 * sx * Ls, shift=(u(25, 45) * sy, u(15, 30) * sx), taper=u(0.5, 0.8),
                      waves=sample_waves(rng, 3, (70, 140), 0.06),
                      cl=(zc + 10 * Lz, Y(-45), 8 * sx + u(-8, 8)),
                      rl=np.array([38 * Lz, 30 * sy, 60 * sx]) * u(0.8, 1.2), rotl=rot_z(u(-0.2, 0.2)))
    zr = zc + up
    a["dome"] = dict(right=(zr, Y(-5), -55 * sx), left=(zr - u(8, 22), Y(-5), 60 * sx), R=u(70, 95))
    a["heart"] = dict(c=(zr + 30, Y(-40), 30 * sx), r=(45, 42 * sy, 55 * sx))
    # spine and great vessels: absolute sizes, placed from the back
    vy, vrx, vry = yb + B - 0.7 * a["fat"] - u(52, 62), u(19, 23), u(15, 18)
    a["spine"] = dict(cy=vy, rx=vrx, ry=vry, canal=vy + vry + 10, period=u(30, 36), z0=u(0, 36))
    ar = u(10, 13)
    a["aorta"] = dict(c=(vy - vry - ar + 3, u(10, 17)), r=ar)
    a["ivc"] = dict(c=(vy - vry - u(6, 10), -u(20, 26)), r=(u(9, 11), u(12, 15)), top=zr - 10)
    ay = a["aorta"]["c"][0]
    a["pancreas"] = [np.array(p) for p in ((zc - 50, ay - 20, -25 * sx), (zc - 42, ay - 20, 5.0),
                                           (zc - 30, ay - 2, 70 * sx))]
    a["pancreas_r"] = u(9, 12)
    kidneys = []
    for side, cz, cx in ((1.0, zc - 58, -68 * sx), (-1.0, zc - 42, 70 * sx)):
        rot = rot_z(side * u(0.35, 0.6))
        r = np.array([52.0, 24.0, 30.0]) * u(0.9, 1.1)
        c = np.array([cz + u(-8, 8), Y(42) + u(-5, 5), cx + u(-5, 5)])
        kidneys.append(dict(c=c, r=r, rot=rot, sinus_c=c + side * 0.55 * r[2] * rot[:, 2],
                            sinus_r=r * np.array([0.55, 0.45, 0.5]), waves=sample_waves(rng, 2, (60, 100), 0.04)))
    a["kidneys"] = kidneys
    a["spleen"] = dict(c=(zc + 2 + u(-8, 8), Y(32), 90 * sx), r=np.array([48, 50 * sy, 22 * sx]) * u(0.85, 1.15),
                       rot=rot_z(-u(0.3, 0.6)), waves=sample_waves(rng, 2, (50, 100), 0.06))
    a["stomach"] = dict(c=(zc + 5, Y(-15), 50 * sx), r=np.array([50, 40 * sy, 38 * sx]) * u(0.8, 1.15),
                        rot=rot_z(u(-0.4, 0.4)), waves=sample_waves(rng, 3, (50, 100), 0.08), air=u(0.1, 0.6))
    a["gallbladder"] = None if u() < 0.15 else dict(
        c=(zc - 42, Y(-28), -28 * sx + u(-8, 8)), r=np.array([30, 14, 15]) * u(0.8, 1.2), rot=rot_z(u(-0.5, 0.5)))
    # vessels: portal trunk into the hilum and its tree; hepatic veins from the IVC
    iy, ix = a["ivc"]["c"]
    hilum = np.array([zc - 12, iy - 22, -30 * sx])
    vessels = [(np.array([zc - 45, iy - 15, -5.0]), hilum, u(6, 8), "portal_trunk")]
    for target in ((zc + 5, a["liver"]["cy"], a["liver"]["cx"] - 10), a["liver"]["cl"]):
        d = np.asarray(target, float) - hilum
        _tree(rng, hilum, d / np.linalg.norm(d), u(4.5, 6), 3, "portal_vein", vessels)
    top = np.array([zc + 40, iy, ix])
    for d in ((0.2, -0.3, -1.0), (0.2, -1.0, -0.3), (0.1, -1.0, 0.5)):
        d = np.asarray(d) + 0.15 * _unit(rng)
        _tree(rng, top, d / np.linalg.norm(d), u(4, 5.5), 2, "hepatic_vein", vessels)
    a["vessels"] = vessels
    bowel = []
    for _ in range(int(rng.integers(8, 16))):
        c = np.array([u(-ez / 2 - 10, zc - 25), Y(u(-80, 10)), u(-75, 95) * sx])
        d = _unit(rng) * np.array([0.6, 1.0, 1.0])
        half = u(15, 35) * d / np.linalg.norm(d)
        bowel.append((c - half, c + half, u(8, 18), int(rng.choice(3, p=[0.3, 0.45, 0.25]))))
    a["bowel"] = bowel
    a["ribs"] = dict(slope=u(30, 40), period=u(30, 36), phase=u(0, 1), z_low=zc - 80)
    return a


def paint_anatomy(frame: Frame, a: dict[str, Any], H: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise ``a`` with tissue HU ``H``: ideal image ``(Z, Y, X)`` float32 HU and the liver mask."""
    img = np.full(frame.shape, H["air"], np.float32)
    z3 = frame.z[:, None, None]
    # body wall, the same on every slice: skin, subcutaneous fat, muscle, then the cavity
    yy, xx = frame.y[:, None] - np.float32(a["yb"]), frame.x[None, :]
    ant = yy < 0
    bb = np.where(ant, a["B_ant"], a["B"]).astype(np.float32)
    p = np.where(ant, a["p_ant"], a["p_post"]).astype(np.float32)
    rho = (np.abs(xx / a["A"]) ** p + np.abs(yy / bb) ** p) ** (1 / p)
    psi = np.arctan2(yy, xx)
    rho = rho / (1 + sum(amp * np.cos(n * psi + ph) for n, amp, ph in a["harm"]))
    r = np.sqrt(xx ** 2 + yy ** 2)
    depth = r / np.maximum(rho, 1e-6) - r
    t_fat = a["fat"] * (1 - 0.3 * np.sin(psi))
    t_wall = t_fat + a["muscle"] * (1 - 0.2 * np.sin(psi))
    inner = depth - t_wall
    cavity = inner > 0
    img[:, depth > 0] = H["skin"]
    img[:, depth > 2] = H["fat"]
    img[:, (depth > t_fat) & ~cavity] = H["muscle"]
    img[:, cavity] = H["fat"]
    # ribs: oblique stripes inside the muscle layer, above the costal margin
    rb = a["ribs"]
    phi = np.arctan2(np.abs(xx), yy)  # 0 posterior, pi anterior
    mid = t_fat + 0.5 * a["muscle"]
    jj, ii = np.nonzero((np.abs(depth - mid) < 4) & (phi > 0.45) & (phi < 2.5))
    ph = phi[jj, ii][None, :]
    f = (((z3[:, :, 0] + rb["slope"] * ph) / rb["period"] + rb["phase"]) % 1.0 - 0.15) / 0.15
    band = f ** 2 + ((depth[jj, ii] - mid[jj, ii]) / 4)[None, :] ** 2 < 1
    band &= z3[:, :, 0] > rb["z_low"] + 70 * (ph / np.pi) ** 1.5
    img[:, jj, ii] = np.where(band, 0.5 * (H["bone_cortex"] + H["bone_marrow"]), img[:, jj, ii])
    # diaphragm domes: thorax (lungs, heart) above, abdomen below
    dm = a["dome"]
    zd = np.maximum(*(c[0] - ((frame.y[:, None] - c[1]) ** 2 + (frame.x[None, :] - c[2]) ** 2) / (2 * dm["R"])
                      for c in (dm["right"], dm["left"])))
    zrel = z3 - zd[None]
    abd = cavity[None] & (zrel < 0)
    img[cavity[None] & (zrel >= 0)] = H["muscle"]
    img[cavity[None] & (zrel >= 5)] = H["lung"]
    sp = a["spine"]
    mediast = (xx / 28) ** 2 + ((frame.y[:, None] - sp["cy"] + sp["ry"] + 12) / 30) ** 2 < 1
    img[cavity[None] & (zrel >= 5) & mediast[None]] = H["fat"]
    hc = a["heart"]
    box = frame.box(hc["c"], hc["r"])
    if box is not None:
        hr = ellipsoid_rho(frame, box, hc["c"], hc["r"])
        above = zrel[box] >= 5
        img[box][(hr < 1.1) & above] = H["fat"]
        img[box][(hr < 1) & above] = H["heart"]
    # retroperitoneal midline (spine, crura, aorta, IVC) is off limits to the liver and bowel
    ay, ax = a["aorta"]["c"]
    iy, ix = a["ivc"]["c"]
    aorta2d = (frame.y[:, None] - ay) ** 2 + (xx - ax) ** 2 < a["aorta"]["r"] ** 2
    ivc2d = ((frame.y[:, None] - iy) / a["ivc"]["r"][0]) ** 2 + ((xx - ix) / a["ivc"]["r"][1]) ** 2 < 1
    mid2d = ((frame.y[:, None] - sp["cy"] + 5) / (sp["ry"] + 22)) ** 2 + ((xx - 5) / 30) ** 2 < 1
    reserved = np.zeros(frame.shape, bool)
    reserved[:, mid2d | aorta2d | ivc2d] = True
    # psoas muscles, growing towards the pelvis
    zps = a["liver"]["zc"] - 30
    rps = np.clip((zps - frame.z) * 0.22 + 4, 0, 22)[:, None, None]
    for s in (-1, 1):
        cxp = s * (sp["rx"] + rps * 0.9)
        m = abd & (((frame.y[:, None] - sp["cy"])[None] / 1.2) ** 2 + (xx[None] - cxp) ** 2 < rps ** 2)
        img[m] = H["muscle"]
        reserved |= m
    for p0, p1, rr, kind in a["bowel"]:
        box = segment_box(frame, p0, p1, rr)
        if box is None:
            continue
        dist = capsule_dist(frame, box, p0, p1)
        m = (dist < rr) & abd[box] & ~reserved[box]
        view = img[box]
        content = H["air"] if kind == 0 else H["fluid"]
        view[m] = content
        if kind == 2:
            view[m & (frame.offsets(box, p0)[1] > 0)] = H["fluid"]
            view[m & (frame.offsets(box, p0)[1] <= 0)] = H["air"]
        view[m & (dist > rr - 2.5)] = H["bowel_wall"]
    pts, pr = a["pancreas"], a["pancreas_r"]
    for p0, p1 in zip(pts[:-1], pts[1:]):
        box = segment_box(frame, p0, p1, pr + 4)
        if box is not None:
            dist = capsule_dist(frame, box, p0, p1)
            img[box][(dist < pr) & abd[box]] = H["pancreas"]
            reserved[box] |= dist < pr + 4
    for k in a["kidneys"]:
        box = frame.box(k["c"], k["r"] * 1.25)
        if box is None:
            continue
        kr = ellipsoid_rho(frame, box, k["c"], k["r"], k["rot"], k["waves"])
        sinus = ellipsoid_rho(frame, box, k["sinus_c"], k["sinus_r"], k["rot"]) < 1
        inside = (kr < 1) & abd[box]
        view = img[box]
        view[inside] = H["kidney_medulla"]
        view[inside & (kr > 0.72)] = H["kidney_cortex"]
        view[inside & sinus] = H["fat"] + 20
        view[inside & (ellipsoid_rho(frame, box, k["sinus_c"], k["sinus_r"] * 0.45, k["rot"]) < 1)] = H["fluid"]
        reserved[box] |= kr < 1.08
    for name in ("spleen", "stomach"):
        o = a[name]
        box = frame.box(o["c"], o["r"] * 1.3)
        if box is None:
            continue
        orr = ellipsoid_rho(frame, box, o["c"], o["r"], o["rot"], o["waves"])
        inside = (orr < 1) & abd[box] & ~reserved[box]
        view = img[box]
        if name == "spleen":
            view[inside] = H["spleen"]
        else:
            view[inside] = H["stomach_wall"]
            lumen = inside & (orr < 1 - 4.0 / float(np.min(o["r"])))
            view[lumen] = H["fluid"]
            view[lumen & (frame.offsets(box, o["c"])[1] < -o["air"] * o["r"][1])] = H["air"]
        reserved[box] |= orr < 1.12
    liver = _liver(frame, a, zrel, abd, reserved, inner)
    img[liver] = H["liver"]
    gb = a["gallbladder"]
    box = None if gb is None else frame.box(gb["c"], gb["r"])
    if box is not None:
        m = (ellipsoid_rho(frame, box, gb["c"], gb["r"], gb["rot"]) < 1) & abd[box]
        img[box][m] = H["fluid"]
        liver[box] &= ~m
    ktop = int(np.searchsorted(frame.z, a["ivc"]["top"]))
    img[:ktop, ivc2d] = H["ivc"]
    img[:, aorta2d] = H["aorta"]
    for p0, p1, rr, kind in a["vessels"]:
        box = segment_box(frame, p0, p1, rr)
        if box is not None:
            m = capsule_dist(frame, box, p0, p1) < rr
            trunk = kind == "portal_trunk"
            img[box][m & (abd[box] if trunk else liver[box])] = H["portal_vein" if trunk else kind]
    _paint_spine(frame, a, H, img, depth, t_fat)
    return img, liver


def _liver(frame: Frame, a: dict[str, Any], zrel: np.ndarray, abd: np.ndarray, reserved: np.ndarray,
           inner: np.ndarray) -> np.ndarray:
    """The liver: a sheared right-lobe ellipsoid (tapering to an inferolateral tip) joined to a
    left lobe, wobbled, kept under the diaphragm dome and out of the other organs."""
    L = a["liver"]
    zc, up, down, cy, cx, ry, rx = (L[k] for k in ("zc", "up", "down", "cy", "cx", "ry", "rx"))
    lo = np.minimum([zc - down, cy - ry - L["shift"][0], cx - rx - L["shift"][1]],
                    np.asarray(L["cl"]) - L["rl"] * 1.2)
    hi = np.maximum([zc + up + 5, cy + ry, cx + rx], np.asarray(L["cl"]) + L["rl"] * 1.2)
    box = frame.box((lo + hi) / 2, (hi - lo) / 2)
    liver = np.zeros(frame.shape, bool)
    if box is None:
        return liver
    t = np.clip((zc - frame.z[box[0]]) / down, 0.0, 0.999)
    s = ((1 - t) ** L["taper"])[:, None, None]  # a wedge, not an ellipsoid, below the centre
    dy = frame.y[box[1]][None, :, None] - (cy - L["shift"][0] * t)[:, None, None]
    dx = frame.x[box[2]][None, None, :] - (cx - L["shift"][1] * t)[:, None, None]
    rho = np.sqrt((dy / (ry * s)) ** 2 + (dx / (rx * s)) ** 2)
    d = frame.offsets(box, (zc, cy, cx))
    rho /= 1 + sum(amp * np.sin(d[0] * k[0] + d[1] * k[1] + d[2] * k[2] + ph) for k, ph, amp in L["waves"])
    rho = np.minimum(rho, ellipsoid_rho(frame, box, L["cl"], L["rl"], L["rotl"], L["waves"]))
    liver[box] = ((rho < 1) & abd[box] & ~reserved[box] & (zrel[box] < -2)
                  & (inner[box[1], box[2]] > 1.5)[None] & (frame.z[box[0]] > zc - down)[:, None, None])
    return liver


def _paint_spine(frame: Frame, a: dict[str, Any], H: dict[str, float], img: np.ndarray,
                 depth: np.ndarray, t_fat: np.ndarray) -> None:
    """Paraspinal muscles, vertebral bodies (with discs), canal and posterior elements."""
    sp = a["spine"]
    yv, xv = frame.y[:, None], frame.x[None, :]
    para = (((np.abs(xv) - 36) / 24) ** 2 + ((yv - sp["canal"] - 18) / 20) ** 2 < 1) & (depth > t_fat)
    img[:, para] = H["muscle"]
    yc = yv - sp["canal"]
    rc = np.sqrt(xv ** 2 + yc ** 2)
    bone = 0.5 * (H["bone_cortex"] + H["bone_marrow"])
    phase = ((frame.z - sp["z0"]) / sp["period"]) % 1.0
    disc = phase < 0.25
    # pedicles and laminae around the canal, a spinous process running back and down
    arch = (rc < 15) | (((np.abs(xv) / 4.5) ** 2 + ((yc - 24) / 16) ** 2) < 1)
    img[:, arch & (depth > 0)] = bone
    # transverse processes: posterolateral bars, on the upper half of each vertebra
    tp = (np.abs((yc - 2) - 0.35 * (np.abs(xv) - 15)) < 4.5) & (np.abs(xv) < 12 + sp["rx"]) & (np.abs(xv) > 8)
    kk = np.flatnonzero((phase > 0.55) & (phase < 0.85))
    jj, ii = np.nonzero(tp & (depth > 0))
    img[kk[:, None], jj[None, :], ii[None, :]] = bone
    img[:, rc < 8.5] = H["fluid"]
    vr = np.sqrt((xv / sp["rx"]) ** 2 + ((yv - sp["cy"]) / sp["ry"]) ** 2)
    img[:, vr < 1] = np.where(disc, H["disc"], H["bone_marrow"]).astype(np.float32)[:, None]
    jj, ii = np.nonzero((vr < 1) & (vr > 1 - 2.0 / sp["ry"]))
    kk = np.flatnonzero(~disc)
    img[kk[:, None], jj[None, :], ii[None, :]] = H["bone_cortex"]
