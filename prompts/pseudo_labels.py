"""Pseudo-labels: a teacher model's confident masks on unlabelled CT, and prompts made from them.

A teacher (any samliver model, adapted or not) needs first prompts on a volume it has no labels
for. They come from one of (`pseudo_label` arguments):

- ``prompts``: given, ``{z: Prompts}`` (e.g. an annotator's boxes, a prompts JSON file);
- ``box_generator``: a callable ``(hu (Z, Y, X), spacing (z, y, x) mm) -> {z: Prompts}``, such as
  a small U-Net's boxes;
- neither: the teacher's own automatic prompts, as ``Predictor.segment_auto`` finds them: its
  prompt-free head's label map (each slice's liver and each tumour component get a tight box), or
  else the model's registered default box generator (`samliver.prompts.generators`).

The teacher then decodes each object from its prompt, and again from ``jitter_rounds`` jittered
copies of it (box sides and clicks moved, seeded). An object is kept when its predicted IoU is at
least ``min_iou``, its *stability* (mean Dice between the masks from jittered prompts and the mask
from the prompt itself) at least ``min_stability``, and it has ``min_pixels`` pixels. Kept objects
are painted into a label volume (0 background, 1 liver, 2 tumour; the higher label wins); pixels
of dropped objects that no kept object of at least their class covers are marked ``uncertain``.
Boxes and clicks for a student come from the pseudo masks by the same object rule as the teacher's
prompts and training (`prompts_from_label`): the liver (labels 1 and 2) is one object, each tumour
component its own.

Where the training recipe's teacher gets its first prompts is named by a registered *prompt source*
(`samliver.prompts.pseudo_sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from samliver.errors import PromptError

from .from_mask import points_from_mask
from .types import Prompts

if TYPE_CHECKING:  # the predictor and model import this package; only their names are needed here
    from samliver.models.base import PromptableSegmenter
    from samliver.predictor import Predictor

    from .generators import BoxGenerator

LIVER, TUMOR = 1, 2

VolumePrompts = Mapping[int, "Prompts | Sequence[Prompts]"]


@dataclass
class ConfidenceFilter:
    """Which of a teacher's masks become pseudo-labels.

    Attributes:
        min_iou: keep objects whose predicted IoU (the decoder's own score) is at least this (0: no IoU test).
        min_stability: ...and whose mean Dice between jittered-prompt masks and the mask is at least this.
        jitter_rounds: jittered decodes per object (0: no stability test).
        box_jitter: each box side moves by up to this fraction of the box's side...
        box_jitter_max_px: ...but at most this many pixels.
        point_jitter_px: each click moves by up to this many pixels in x and in y.
        min_pixels: objects smaller than this many pixels on their slice are dropped.
        require_liver: a tumour is kept only on a slice whose liver was kept (in a label map the liver
            is everything labelled 1 or 2, so a lone tumour would teach a student a wrong liver).
        multimask: decode 3 masks per object and keep the best-scoring (SAM's ambiguity handling).
    """

    min_iou: float = 0.5
    min_stability: float = 0.8
    jitter_rounds: int = 4
    box_jitter: float = 0.1
    box_jitter_max_px: float = 10.0
    point_jitter_px: float = 3.0
    min_pixels: int = 10
    require_liver: bool = True
    multimask: bool = False

    def __post_init__(self) -> None:
        for key in ("min_iou", "min_stability"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise PromptError(f"pseudo-label filter: {key} must lie in [0, 1], got {getattr(self, key)}")
        for key in ("jitter_rounds", "box_jitter", "box_jitter_max_px", "point_jitter_px", "min_pixels"):
            if getattr(self, key) < 0:
                raise PromptError(f"pseudo-label filter: {key} must be 0 or more, got {getattr(self, key)}")


@dataclass
class PseudoObject:
    """The teacher's verdict on one object of one slice."""

    slice: int
    label: int
    score: float          # predicted IoU
    stability: float      # mean Dice of jittered-prompt masks against the mask (1.0 without jitter)
    pixels: int
    kept: bool
    reason: str | None = None   # why it was dropped

    def as_json(self) -> dict[str, Any]:
        return {"slice": self.slice, "label": self.label, "score": round(self.score, 4),
                "stability": round(self.stability, 4), "pixels": self.pixels, "kept": self.kept,
                "reason": self.reason}


@dataclass
class PseudoLabels:
    """A teacher's pseudo-labels for one volume.

    Attributes:
        label: ``(Z, Y, X)`` uint8, kept objects painted with their class (0, 1 liver, 2 tumour).
        uncertain: ``(Z, Y, X)`` bool, pixels of dropped objects no kept object of their class or above covers.
        objects: every decoded object, kept or not, in slice order.
        boxes: ``{z: Prompts}`` a tight box per object of ``label[z]``, objects as `prompts_from_label` makes
            them (the liver, 1 and 2 together, as one object; each tumour component its own) once pieces of
            the organ smaller than ``min_pixels`` pixels are removed; tumours that small get no box.
        points: ``{z: Prompts}`` one interior click per such object (`student_prompts`).
    """

    label: np.ndarray
    uncertain: np.ndarray
    objects: list[PseudoObject] = field(default_factory=list)
    boxes: dict[int, Prompts] = field(default_factory=dict)
    points: dict[int, Prompts] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts of kept / dropped objects per class and the reasons for dropping."""
        out: dict[str, Any] = {"kept": {}, "dropped": {}, "reasons": {}}
        for obj in self.objects:
            name = {LIVER: "liver", TUMOR: "tumor"}.get(obj.label, str(obj.label))
            part = out["kept" if obj.kept else "dropped"]
            part[name] = part.get(name, 0) + 1
            if obj.reason:
                out["reasons"][obj.reason] = out["reasons"].get(obj.reason, 0) + 1
        out["slices_with_labels"] = int((self.label > 0).any(axis=(1, 2)).sum())
        out["uncertain_voxels"] = int(self.uncertain.sum())
        return out


def jitter_prompts(prompts: Prompts, height: int, width: int, settings: ConfidenceFilter,
                   rng: np.random.Generator) -> Prompts:
    """``prompts`` with every box side moved by ``U(-j, j)``, ``j = min(box_jitter * side,
    box_jitter_max_px)``, and every click by ``U(-p, p)`` pixels in x and y (clipped to the
    ``(height, width)`` slice; boxes stay at least one pixel wide). Mask and token prompts are kept.
    Hand-written: jittering given prompts is not in segment-anything or MONAI (training's
    `samliver.training.prompting` jitters boxes made from masks)."""
    boxes = points = None
    if prompts.boxes is not None:
        b = prompts.boxes
        sides = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)                     # (N, 2): w, h
        reach = np.tile(np.minimum(settings.box_jitter * sides, settings.box_jitter_max_px), 2)  # (N, 4)
        boxes = np.clip(b + rng.uniform(-1, 1, b.shape) * reach, 0, [width, height, width, height])
        boxes[:, 2] = np.maximum(boxes[:, 2], np.minimum(boxes[:, 0] + 1, width))
        boxes[:, 0] = np.minimum(boxes[:, 0], boxes[:, 2] - 1)
        boxes[:, 3] = np.maximum(boxes[:, 3], np.minimum(boxes[:, 1] + 1, height))
        boxes[:, 1] = np.minimum(boxes[:, 1], boxes[:, 3] - 1)
    if prompts.points is not None:
        p = settings.point_jitter_px
        points = np.clip(prompts.points + rng.uniform(-p, p, prompts.points.shape), 0, [width - 1, height - 1])
    return Prompts(boxes=boxes, points=points, point_labels=prompts.point_labels, masks=prompts.masks,
                   tokens=prompts.tokens, labels=prompts.labels)


def mask_dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-object Dice ``(N,)`` of two ``(N, H, W)`` bool mask stacks, by MONAI's ``compute_dice``
    (1.0 where both are empty, 0.0 where only ``ref`` is)."""
    import torch
    from monai.metrics import compute_dice

    def channels(masks: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(masks))[:, None].float()          # (N, 1, H, W)

    return compute_dice(channels(pred), channels(ref), include_background=True, ignore_empty=False)[:, 0].numpy()


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """``(4,)`` xyxy pixel-edge box around all of ``mask`` ``(H, W)`` (the liver may come in pieces)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def prompts_from_label(label: np.ndarray, labels: Sequence[int] = (LIVER, TUMOR),
                       min_pixels: int = 1) -> dict[int, Prompts]:
    """Tight boxes per object per slice of a label volume ``(Z, Y, X)``: the liver (1 and 2) as one
    object, each tumour component its own (`samliver.data.objects_from_label`)."""
    from samliver.data import objects_from_label

    out = {}
    for z in np.flatnonzero((label > 0).any(axis=(1, 2))):
        masks, classes = objects_from_label(label[z], liver=LIVER in labels, tumor=TUMOR in labels,
                                            min_pixels=min_pixels)
        if len(classes):
            out[int(z)] = Prompts(boxes=np.stack([_tight_box(m) for m in masks]), labels=classes.astype(np.uint8))
    return out


def pseudo_label(teacher: PromptableSegmenter | Predictor, volume: Any, prompts: VolumePrompts | None = None, *,
                 box_generator: BoxGenerator | None = None, spacing: Sequence[float] | None = None,
                 settings: ConfidenceFilter | None = None, labels: Sequence[int] = (LIVER, TUMOR),
                 window: tuple[float, float] | None = None, seed: int = 0) -> PseudoLabels:
    """The teacher's confident masks on ``volume`` (see the module docstring).

    Args:
        teacher: a `PromptableSegmenter` or a `samliver.Predictor` around one.
        volume: a `CTVolume` or a ``(Z, Y, X)`` float32 HU array (canonical orientation).
        prompts: the first prompts, ``{z: Prompts or [Prompts, ...]}``; or ``box_generator``, a callable
            ``(hu (Z, Y, X), spacing (z, y, x) mm) -> {z: Prompts}``; or neither (the teacher's own
            automatic prompts: its prompt-free head, else its default box generator).
        spacing: ``(z, y, x)`` mm for ``box_generator`` (default: the `CTVolume`'s).
        labels: classes to pseudo-label; prompts of other classes are ignored.
        window: ``(lo, hi)`` HU for the teacher's preprocessing (default: the model's).
        seed: seeds the prompt jitter (slice ``z`` uses ``(seed, z)``), so results are repeatable.

    Raises:
        PromptError: both ``prompts`` and ``box_generator`` given, or a prompt outside its slice.
        NoTaskHeadError: neither given, and the teacher has no prompt-free head and no default box generator.
        BoxGeneratorError: the box generator returned something other than ``{slice: Prompts}``.
    """
    from samliver.inference import decode_objects, paint
    from samliver.predictor import Predictor

    settings = settings or ConfidenceFilter()
    hu = np.asarray(getattr(volume, "array", volume), dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"pseudo_label: expected a (Z, Y, X) HU volume, got shape {hu.shape}")
    depth, height, width = hu.shape
    predictor = teacher if isinstance(teacher, Predictor) else Predictor(teacher, cache_size=max(64, depth))
    if prompts is not None and box_generator is not None:
        raise PromptError("pseudo_label: give prompts or a box_generator, not both")
    if prompts is None and box_generator is None:
        from samliver.auto import resolve_generator

        box_generator = resolve_generator(predictor.model, None)   # None: the model has a prompt-free head
        if box_generator is None:
            prompts = prompts_from_label(predictor.segment_auto(hu, window=window), labels, settings.min_pixels)
    if box_generator is not None:
        from .generators import check_generated

        spacing = spacing if spacing is not None else getattr(volume, "spacing", None)
        if spacing is None:
            raise PromptError("pseudo_label: a box generator needs the voxel spacing; pass spacing=(z, y, x) "
                              "in mm, or a CTVolume")
        prompts = check_generated(box_generator(hu, tuple(float(s) for s in spacing)), depth)
    batches = _batches(prompts, labels, depth, height, width)

    label = np.zeros(hu.shape, np.uint8)
    uncertain = np.zeros(hu.shape, bool)
    objects: list[PseudoObject] = []
    order = sorted(batches)
    step = predictor.encoder.batch_size
    for start in range(0, len(order), step):
        embeddings = predictor.encoder.encode(hu, order[start:start + step], window)
        for z in order[start:start + step]:
            rng = np.random.default_rng([int(seed), z])
            masks, found = [], []
            for group in batches[z]:
                pred = decode_objects(predictor.model, embeddings[z], group, (height, width), settings.multimask)
                stable = np.ones(len(group))
                if settings.jitter_rounds:  # all jittered copies decode as one batch of rounds * N objects
                    jittered = _concat([jitter_prompts(group, height, width, settings, rng)
                                        for _ in range(settings.jitter_rounds)])
                    runs = decode_objects(predictor.model, embeddings[z], jittered, (height, width),
                                          settings.multimask).masks.reshape(settings.jitter_rounds, *pred.masks.shape)
                    stable = np.mean([mask_dice(run, pred.masks) for run in runs], axis=0)
                for i in range(len(group)):
                    masks.append(pred.masks[i])
                    found.append(PseudoObject(z, int(group.labels[i]), float(pred.scores[i]), float(stable[i]),
                                              int(pred.masks[i].sum()), True))
            _judge(found, settings, LIVER in labels)
            kept = [i for i, o in enumerate(found) if o.kept]
            if kept:
                paint(label[z], np.stack([masks[i] for i in kept]), np.array([found[i].label for i in kept]))
            for i, obj in enumerate(found):
                if not obj.kept:
                    uncertain[z] |= masks[i] & (label[z] < obj.label)
            objects += found
    boxes, points = {}, {}
    for z in np.flatnonzero(label.any(axis=(1, 2))):
        found = student_prompts(label[z], labels, settings.min_pixels)
        if found is not None:
            boxes[int(z)], points[int(z)] = found
    return PseudoLabels(label, uncertain, objects, boxes, points)


def student_prompts(label_2d: np.ndarray, labels: Sequence[int] = (LIVER, TUMOR),
                    min_pixels: int = 1) -> tuple[Prompts, Prompts] | None:
    """A student's prompts from one pseudo-labelled slice ``(H, W)`` (0/1/2): ``(boxes, clicks)``, None when
    no object is left.

    Objects follow `prompts_from_label` (`samliver.data.objects_from_label`): the liver (1 and 2 together)
    as one object with one tight box around all its pieces, each tumour component its own; first, 8-connected
    pieces of the organ smaller than ``min_pixels`` are removed (a mask's stray specks would stretch the
    liver's box) and tumours that small get no prompt. The click is the object's most interior pixel
    (`points_from_mask`'s first click; for a liver in pieces, the deepest of its pieces' clicks).
    """
    from scipy import ndimage

    from samliver.data import objects_from_label

    organ, n = ndimage.label(label_2d > 0, structure=np.ones((3, 3), bool))
    small = np.bincount(organ.ravel(), minlength=n + 1) < max(min_pixels, 1)
    small[0] = False
    cleaned = np.where(small[organ], 0, label_2d)
    masks, classes = objects_from_label(cleaned, liver=LIVER in labels, tumor=TUMOR in labels, min_pixels=min_pixels)
    if not len(classes):
        return None
    tags = classes.astype(np.uint8)
    clicks = np.stack([_deepest_click(m) for m in masks])[:, None]                      # (N, 1, 2) x, y
    return (Prompts(boxes=np.stack([_tight_box(m) for m in masks]), labels=tags),
            Prompts(points=clicks, point_labels=np.ones((len(tags), 1), np.int64), labels=tags))


def _deepest_click(mask: np.ndarray) -> np.ndarray:
    """``(2,)`` x, y: of `points_from_mask`'s clicks (one per piece of ``mask`` ``(H, W)``), the one deepest
    inside ``mask``."""
    from scipy import ndimage

    clicks = points_from_mask(mask).points[:, 0]                                        # (pieces, 2)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    x, y = clicks[:, 0].astype(int), clicks[:, 1].astype(int)
    return clicks[int(np.argmax(depth[y, x]))]


def _batches(prompts: VolumePrompts, labels: Sequence[int], depth: int, height: int,
             width: int) -> dict[int, list[Prompts]]:
    """``{z: [Prompts, ...]}`` checked against the volume, restricted to ``labels``, empty batches left out."""
    out: dict[int, list[Prompts]] = {}
    for z, value in prompts.items():
        if not (isinstance(z, (int, np.integer)) and 0 <= z < depth):
            raise PromptError(f"prompts: slice {z!r} outside the volume's {depth} slices")
        for group in [value] if isinstance(value, Prompts) else list(value):
            wanted = np.isin(group.labels, list(labels))
            if wanted.any():
                out.setdefault(int(z), []).append(group.select(wanted).check_inside(height, width))
    return out


def _concat(batches: Sequence[Prompts]) -> Prompts:
    """One `Prompts` of all the objects of ``batches`` (same fields set in each), in order."""
    def join(name: str) -> np.ndarray | None:
        values = [getattr(b, name) for b in batches]
        return None if values[0] is None else np.concatenate(values)

    return Prompts(boxes=join("boxes"), points=join("points"), point_labels=join("point_labels"),
                   masks=join("masks"), tokens=join("tokens"), labels=join("labels"))


def _judge(found: list[PseudoObject], settings: ConfidenceFilter, liver_wanted: bool) -> None:
    """Set ``kept`` / ``reason`` of one slice's objects in place."""
    for obj in found:
        if obj.pixels < max(settings.min_pixels, 1):
            obj.kept, obj.reason = False, "too small"
        elif settings.min_iou > 0 and obj.score < settings.min_iou:  # 0 disables it (untrained IoU heads go below 0)
            obj.kept, obj.reason = False, "low predicted IoU"
        elif obj.stability < settings.min_stability:
            obj.kept, obj.reason = False, "unstable under prompt jitter"
    if settings.require_liver and liver_wanted and not any(o.kept and o.label == LIVER for o in found):
        for obj in found:
            if obj.kept and obj.label == TUMOR:
                obj.kept, obj.reason = False, "no confident liver on its slice"
