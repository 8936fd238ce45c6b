"""Fully automatic segmentation: a box generator's prompts, refined by the model, become a
3D label map (1 liver, 2 tumour; tumour components that touch no liver dropped), optionally cleaned in 3D.

`Predictor.segment_auto` is the entry point; this module holds its steps. Without a generator,
a model with a prompt-free head (``decoder`` adapter, ``head: multiclass``) uses the head, and
any other model its registered default generator (`samliver.prompts.generators`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from samliver.adapters.task_head import NoTaskHeadError
from samliver.cleanup import LIVER, TUMOUR, cleanup_labels, constrain_tumours
from samliver.errors import SamliverError
from samliver.inference import decode_objects
from samliver.prompts import Prompts
from samliver.prompts.component_boxes import check_spacing
from samliver.prompts.generators import BoxGenerator, check_generated, default_box_generator

if TYPE_CHECKING:
    from samliver.predictor import Predictor


class NoAutomaticPromptsError(NoTaskHeadError):
    """A model with neither a prompt-free head nor a default box generator was asked to segment
    without prompts (a `NoTaskHeadError`, so callers that expected the head's error still catch it)."""


class MissingSpacingError(SamliverError, ValueError):
    """A box generator needs the voxel spacing, and a bare array carries none."""


def model_name(model) -> str:
    return getattr(getattr(model, "spec", None), "name", type(model).__name__)


def resolve_generator(model, box_generator: BoxGenerator | None) -> BoxGenerator | None:
    """The generator `segment_auto` uses: ``box_generator`` if given (as it is); None for a model with a
    prompt-free head (the head segments); else the model's registered default, moved to the model's device
    where it has a ``to`` (the bundled U-Net runs beside the model, not on the CPU while the model is on a GPU).

    Raises:
        TypeError: ``box_generator`` is not callable (e.g. a window passed by position).
        NoAutomaticPromptsError: no head and no default generator (one line, saying what to pass).
    """
    if box_generator is not None:
        if not callable(box_generator):
            raise TypeError(f"box_generator must be callable (hu, spacing) -> {{slice: Prompts}}, got "
                            f"{type(box_generator).__name__} (pass window= by keyword)")
        return box_generator
    if getattr(model, "task_head", None) is not None:
        return None
    name = model_name(model)
    generator = default_box_generator(name)
    if generator is None:
        raise NoAutomaticPromptsError(
            f"{name} has no prompt-free head and no default box generator: pass box_generator= (e.g. "
            f"samliver.prompts.unet_boxes.load_box_generator(PATH)), or train a 'decoder' adapter with "
            f"head: multiclass")
    device = getattr(model, "device", None)
    if device is not None and callable(getattr(generator, "to", None)):
        generator.to(device)
    return generator


def decode_generated(predictor: "Predictor", hu: np.ndarray, prompts: dict[int, Prompts],
                     window: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refine every prompted object with the model: ``(liver, tumour)`` masks ``(Z, H, W)`` bool,
    the union of the label-1 and of the label-2 objects' masks. Only prompted slices are encoded
    (in batches, through the predictor's embedding cache); every other slice stays empty."""
    depth, height, width = hu.shape
    liver = np.zeros(hu.shape, bool)
    tumour = np.zeros(hu.shape, bool)
    prompts = {z: p.check_inside(height, width) for z, p in prompts.items()}
    order = sorted(prompts)
    step = predictor.encoder.batch_size
    for start in range(0, len(order), step):
        embeddings = predictor.encoder.encode(hu, order[start:start + step], window)
        for z, emb in embeddings.items():
            objects = prompts[z]
            masks = decode_objects(predictor.model, emb, objects, (height, width)).masks
            liver[z] = masks[objects.labels == LIVER].any(axis=0)
            tumour[z] = masks[objects.labels == TUMOUR].any(axis=0)
    return liver, tumour


def segment_auto(predictor: "Predictor", volume, box_generator: BoxGenerator | None = None, cleanup: bool = True,
                 window: tuple[float, float] | None = None,
                 spacing: tuple[float, float, float] | None = None) -> np.ndarray:
    """See `Predictor.segment_auto`."""
    from samliver.predictor import _hu_array

    hu = _hu_array(volume)
    generator = resolve_generator(predictor.model, box_generator)
    if generator is None:
        labels = predictor.segment_head(hu, window=window)
        return cleanup_labels(labels) if cleanup else labels
    spacing = spacing if spacing is not None else getattr(volume, "spacing", None)
    if spacing is None:
        raise MissingSpacingError("segment_auto: a (Z, H, W) array carries no voxel spacing, which the box "
                                  "generator needs; pass spacing=(z, y, x) in mm, or a CTVolume")
    spacing = check_spacing(spacing)
    prompts = check_generated(generator(hu, spacing), hu.shape[0])
    labels = constrain_tumours(*decode_generated(predictor, hu, prompts, window))
    return cleanup_labels(labels) if cleanup else labels
