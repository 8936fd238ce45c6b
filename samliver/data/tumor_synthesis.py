"""Synthetic liver tumours in real CT, after the heuristic recipe of Hu et al. 2023
("Label-free liver tumor segmentation", CVPR), written from the paper's description.

Each lesion: a centre inside the liver, away from its boundary and from large vessels (bright
voxels of the smoothed liver above a percentile); a randomly rotated ellipsoid, elastically
deformed by a smooth random field; a texture of Gaussian-filtered noise around a target HU set
relative to the local parenchyma (hypodense: median minus a delta, hyperdense: plus); the
scanner's own fine-grained noise kept; an optional brighter rim; and a Gaussian-blurred blend
weight, so margins mix with the parenchyma. The weight is clipped to the liver and to 3 voxels
around the lesion's label: no voxel outside the liver changes, and voxels farther than 3 voxels
(Euclidean, in voxel units) from every inserted lesion keep their exact input values.

Options (keyword arguments; an unknown name raises `TumorSynthesisError`, a ValueError):

====================== ============================== ==========================================
option                 default                        meaning
====================== ============================== ==========================================
count                  (1, 3)                         lesions per volume, int or inclusive range
diameter_mm            ((4, 10), (10, 25), (25, 50))  nominal diameter ranges (mm) of the small,
                                                      medium, large classes (or one (lo, hi) pair)
size_mix               (0.4, 0.35, 0.25)              probability of each size class
contrast_hu            (20, 60)                       |median lesion - local parenchyma| (HU), >= 10
hyperdense_probability 0.2                            chance a lesion is brighter than the liver
rim_probability        0.25                           chance a hypodense lesion gets a bright rim
rim_hu                 (10, 30)                       rim brightness above the parenchyma (HU)
edge_blur_mm           1.5                            SD (mm) of the margin blur (<= 0.35 x radius)
texture_hu             (3, 10)                        SD (HU) of the lesion's filtered-noise texture
vessel_percentile      95.0                           liver HU percentile above which voxels are
                                                      vessels (None: no vessel avoidance)
boundary_mm            4.0                            least distance (mm) of a centre from the
                                                      liver's boundary
deformation            0.15                           largest surface displacement / radius
====================== ============================== ==========================================

Sizes are nominal: lesions are clipped to the liver, so one near the surface can end smaller.
Cost: ~0.1 s for a 3 mm abdomen, ~2-3 s for a 512 x 512 x 120 CT (one CPU core).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from samliver.errors import TumorSynthesisError
from samliver.io import CTVolume, load_ct, load_label, save_image, save_mask

from .case import LIVER, TUMOR
from .tumor_shapes import SUPPORT_VOXELS, LesionPlacer, SynthesizedTumor, bounding_box

__all__ = ["DEFAULT_OPTIONS", "SUPPORT_VOXELS", "SynthesizedTumor", "TumorSynthesisAugment", "TumorSynthesisError",
           "TumorSynthesisResult", "insert_tumors", "synthesize_tumors", "synthesize_tumors_files",
           "validate_options"]

DEFAULT_OPTIONS: dict[str, Any] = {
    "count": (1, 3), "diameter_mm": ((4.0, 10.0), (10.0, 25.0), (25.0, 50.0)), "size_mix": (0.4, 0.35, 0.25),
    "contrast_hu": (20.0, 60.0), "hyperdense_probability": 0.2, "rim_probability": 0.25, "rim_hu": (10.0, 30.0),
    "edge_blur_mm": 1.5, "texture_hu": (3.0, 10.0), "vessel_percentile": 95.0, "boundary_mm": 4.0,
    "deformation": 0.15,
}


@dataclass
class TumorSynthesisResult:
    """`insert_tumors` output: ``hu`` float32 and ``label`` uint8 (0/1/2), both ``(Z, Y, X)``."""

    hu: np.ndarray
    label: np.ndarray
    tumors: list[SynthesizedTumor]


def validate_options(**options: Any) -> dict[str, Any]:
    """The full option set (defaults filled in), checked; raises `TumorSynthesisError` naming the option."""
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise TumorSynthesisError(f"unknown tumour-synthesis option(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    count = opts["count"]
    count = (count, count) if isinstance(count, (int, np.integer)) and not isinstance(count, bool) else count
    opts["count"] = tuple(int(v) for v in _range("count", count, 0, 100, integer=True))
    sizes = opts["diameter_mm"]
    if not isinstance(sizes, Sequence) or not sizes:
        raise TumorSynthesisError(f"diameter_mm must be a (low, high) pair or a list of them (mm); got {sizes!r}")
    pairs = [sizes] if len(sizes) == 2 and all(np.isscalar(v) for v in sizes) else list(sizes)
    opts["diameter_mm"] = [_range("diameter_mm", p, 0.5, 300.0) for p in pairs]
    if "size_mix" not in options and len(pairs) != 3:
        opts["size_mix"] = (1.0,) * len(pairs)
    try:
        mix = np.asarray(opts["size_mix"], dtype=float)
    except (TypeError, ValueError):
        mix = np.zeros(0)
    if mix.shape != (len(pairs),) or not np.all(np.isfinite(mix)) or mix.min() < 0 or mix.sum() <= 0:
        raise TumorSynthesisError(f"size_mix must be {len(pairs)} non-negative weights, one per "
                                  f"diameter_mm class; got {opts['size_mix']!r}")
    opts["size_mix"] = mix / mix.sum()
    opts["contrast_hu"] = _range("contrast_hu", opts["contrast_hu"], 10.0, 1000.0)
    opts["rim_hu"] = _range("rim_hu", opts["rim_hu"], 0.0, 1000.0)
    opts["texture_hu"] = _range("texture_hu", opts["texture_hu"], 0.0, 200.0)
    for name, low, high in (("hyperdense_probability", 0, 1), ("rim_probability", 0, 1),
                            ("edge_blur_mm", 0, 20), ("boundary_mm", 0, 200), ("deformation", 0, 0.5)):
        opts[name] = _number(name, opts[name], low, high)
    if opts["vessel_percentile"] is not None:
        opts["vessel_percentile"] = _number("vessel_percentile", opts["vessel_percentile"], 0, 100)
    return opts


def synthesize_tumors(ct: CTVolume, liver_mask: np.ndarray, seed: int = 0, **options: Any) -> tuple[CTVolume, np.ndarray]:
    """Insert synthetic tumours into ``ct``'s liver.

    Args:
        ct: the CT; ``ct.array`` ``(Z, Y, X)`` HU, ``ct.spacing`` ``(z, y, x)`` mm.
        liver_mask: ``(Z, Y, X)`` labels on ``ct``'s grid: values > 0 are liver; existing label 2
            (tumour) voxels are kept and left untouched.
        seed: the result is a deterministic function of (inputs, seed, options).
        **options: see the module docstring.

    Returns:
        ``(new_ct, label)``: the CT with tumours (same geometry and source, float32 HU) and the
        ``(Z, Y, X)`` uint8 label: 0 background, 1 liver, 2 tumour (existing and new).

    Raises:
        TumorSynthesisError (a ValueError): bad options, a mask of the wrong shape, an empty liver.
    """
    result = insert_tumors(ct.array, liver_mask, ct.spacing, seed, **options)
    return replace(ct, array=result.hu), result.label


def insert_tumors(
    hu: np.ndarray, label: np.ndarray, spacing: Sequence[float],
    seed: int | np.random.Generator | None = 0, **options: Any,
) -> TumorSynthesisResult:
    """Array-level `synthesize_tumors`: ``hu`` ``(A, B, C)`` HU, ``label`` as ``liver_mask`` there,
    ``spacing`` mm per array axis (any axis order). Also returns one `SynthesizedTumor` per lesion;
    fewer than drawn where the liver has no room left (never overlapping, never touching)."""
    opts = validate_options(**options)
    hu, label = np.asarray(hu), np.asarray(label)
    if hu.ndim != 3 or label.shape != hu.shape:
        raise TumorSynthesisError(f"liver mask shape {label.shape} does not match the CT's shape {hu.shape}")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or min(sp) <= 0:
        raise TumorSynthesisError(f"spacing must be 3 positive mm values; got {spacing!r}")
    liver = label > 0
    existing = label == TUMOR
    parenchyma = liver & ~existing
    if not liver.any():
        raise TumorSynthesisError("liver mask is empty (no voxel > 0): there is no liver to put a tumour in")
    if not parenchyma.any():
        raise TumorSynthesisError("liver mask holds only tumour (label 2): there is no parenchyma left")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out_hu = np.array(hu, dtype=np.float32, copy=True)
    out_label = np.where(existing, TUMOR, liver.astype(np.uint8) * LIVER).astype(np.uint8)
    box = bounding_box(liver)
    site = LesionPlacer(np.asarray(hu, np.float32)[box], parenchyma[box], existing[box], sp, opts)
    placed: list[SynthesizedTumor] = []  # centres in box coordinates
    for _ in range(int(rng.integers(opts["count"][0], opts["count"][1] + 1))):
        tumor = site.place(rng, out_hu[box], out_label[box], placed)
        if tumor is not None:
            placed.append(tumor)
    tumors = [replace(t, center=tuple(int(c + b.start) for c, b in zip(t.center, box))) for t in placed]
    return TumorSynthesisResult(out_hu, out_label, tumors)


def synthesize_tumors_files(
    ct_path: str | os.PathLike[str], liver_mask_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
    seed: int = 0, **options: Any,
) -> tuple[Path, Path]:
    """Load a CT and its liver mask, insert tumours, write ``image.nii.gz`` + ``label.nii.gz``.

    Both files lie on the CT file's own grid (voxel order, affine, qform/sform as read). The image
    holds HU rounded to int16; the label is uint8 0/1/2. Each write is atomic (temp file, fsync,
    rename). ``out_dir`` is created if needed. Returns ``(image_path, label_path)``.
    """
    validate_options(**options)
    ct = load_ct(ct_path)
    mask = load_label(liver_mask_path, like=ct)
    new_ct, label = synthesize_tumors(ct, mask, seed=seed, **options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_path, label_path = out / "image.nii.gz", out / "label.nii.gz"
    for target in (image_path, label_path):
        if any(target.resolve() == Path(p).resolve() for p in (ct_path, liver_mask_path)):
            raise TumorSynthesisError(f"{target}: refusing to overwrite an input file")
    save_image(new_ct, image_path)
    save_mask(label, like=ct, path=label_path)
    return image_path, label_path


class TumorSynthesisAugment:
    """On-the-fly tumour insertion for training, with probability ``probability`` per call.

    Two call forms:

    * ``aug(hu, label, spacing=None) -> (hu, label)``: ``hu`` ``(A, B, C)`` or ``(1, A, B, C)`` HU
      and ``label`` the same shape (> 0 liver, 2 tumour), numpy arrays or torch tensors (dtype,
      device and MONAI MetaTensor meta kept); ``spacing`` mm per spatial array axis.
    * ``aug(data_dict) -> dict``: a MONAI-style dict transform over ``keys`` (image, label).
      Spacing comes from the constructor's ``spacing``, else ``data["spacing"]``, else the image's
      MetaTensor ``pixdim``, else ``data[f"{image_key}_meta_dict"]["pixdim"][1:4]``; always in
      the image array's own spatial axis order, so (X, Y, Z) MONAI arrays work as they are.

    Patches without liver pass through unchanged. ``seed=None`` draws from OS entropy; with a
    seed, each process (DataLoader worker) gets its own stream from ``(seed, worker id)``.
    ``set_random_state(seed)`` reseeds (MONAI's `Compose.set_random_state` convention).
    """

    def __init__(self, probability: float = 0.5, seed: int | None = None, keys: Sequence[str] = ("image", "label"),
                 spacing: Sequence[float] | None = None, **options: Any) -> None:
        self.probability = _number("probability", probability, 0, 1)
        self.options = options
        validate_options(**options)
        self.keys, self.spacing = tuple(keys), spacing
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "TumorSynthesisAugment":
        self.seed = int(state.randint(2**31)) if state is not None else seed
        self._rng, self._pid = None, None
        return self

    def _generator(self) -> np.random.Generator:
        if self._rng is None or self._pid != os.getpid():
            worker = 0
            if "torch" in sys.modules:  # a DataLoader worker: its own stream
                info = sys.modules["torch"].utils.data.get_worker_info()
                worker = info.id if info is not None else 0
            self._rng = np.random.default_rng(None if self.seed is None else [self.seed, worker])
            self._pid = os.getpid()
        return self._rng

    def __call__(self, data: Any, label: Any = None, spacing: Sequence[float] | None = None) -> Any:
        if isinstance(data, Mapping):
            out = dict(data)
            img_key, lab_key = self.keys
            img = data[img_key]
            sp = _first(spacing, self.spacing, data.get("spacing"), _meta_spacing(img, data.get(f"{img_key}_meta_dict")))
            out[img_key], out[lab_key] = self._apply(img, data[lab_key], sp)
            return out
        if label is None:
            raise TumorSynthesisError("TumorSynthesisAugment needs a label map (or a dict with keys "
                                      f"{self.keys})")
        return self._apply(data, label, _first(spacing, self.spacing))

    def _apply(self, hu: Any, label: Any, spacing: Sequence[float] | None) -> tuple[Any, Any]:
        rng = self._generator()
        if rng.random() >= self.probability:
            return hu, label
        if spacing is None:
            raise TumorSynthesisError("TumorSynthesisAugment needs the voxel spacing (mm): pass spacing=")
        hu_np, lab_np = _as_numpy(hu), _as_numpy(label)
        if not np.any((lab_np > 0) & (lab_np != TUMOR)):
            return hu, label
        result = insert_tumors(hu_np, lab_np, [float(s) for s in np.ravel(spacing)][-3:], rng, **self.options)
        return _like(result.hu, hu), _like(result.label, label)


def _as_numpy(x: Any) -> np.ndarray:
    array = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise TumorSynthesisError(f"expected a (A, B, C) or (1, A, B, C) volume; got shape {array.shape}")
    return array


def _like(values: np.ndarray, ref: Any) -> Any:
    """``values`` in the container, shape, dtype (and device/meta) of ``ref``."""
    ref_dtype = np.asarray(ref).dtype if not hasattr(ref, "detach") else None
    if hasattr(ref, "detach"):
        import torch

        out = ref.clone()
        src = torch.from_numpy(np.ascontiguousarray(values)).reshape(ref.shape)
        if src.is_floating_point() and not out.dtype.is_floating_point:
            src = src.round()
        out.copy_(src.to(dtype=out.dtype, device=out.device))
        return out
    if ref_dtype.kind in "iub":
        values = np.rint(values)
    return values.reshape(np.shape(ref)).astype(ref_dtype)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _meta_spacing(img: Any, meta: Mapping | None) -> tuple[float, ...] | None:
    if getattr(img, "pixdim", None) is not None:
        return tuple(float(v) for v in np.ravel(np.asarray(img.pixdim))[:3])
    if meta is not None and meta.get("pixdim") is not None:
        pixdim = np.ravel(np.asarray(meta["pixdim"], dtype=float))
        return tuple(pixdim[1:4]) if pixdim.size >= 4 else tuple(pixdim[:3])
    return None


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise TumorSynthesisError(f"{name} must be a number in [{low}, {high}]; got {value!r}")
    return float(value)


def _range(name: str, value: Any, low: float, high: float, integer: bool = False) -> tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TumorSynthesisError(f"{name} must be a (low, high) pair; got {value!r}") from None
    a, b = _number(name, a, low, high), _number(name, b, low, high)
    if a > b or (integer and (a != int(a) or b != int(b))):
        raise TumorSynthesisError(f"{name} must be a (low, high) pair of {'integers' if integer else 'numbers'} "
                                  f"with low <= high in [{low}, {high}]; got {value!r}")
    return a, b
