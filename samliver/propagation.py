"""Box propagation: 3D from one prompted slice for models without a memory (SAM, MedSAM).

From the key slice outwards in both directions, each object's next box is the bounding box
of its mask on the slice before, grown by a margin; an object stops when its mask vanishes.
All objects still alive on a slice are decoded in one batch from one encoder pass.
"""

from __future__ import annotations

import numpy as np

from samliver.errors import PromptError
from samliver.prompts import Prompts

from samliver.inference import SliceEncoder, decode_objects, paint


def mask_box(mask: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """Pixel-edge box ``(x0, y0, x1, y1)`` of a non-empty ``(H, W)`` mask, grown by ``margin`` pixels and clipped."""
    rows, cols = np.nonzero(mask)
    return np.array([max(cols.min() - margin, 0), max(rows.min() - margin, 0),
                     min(cols.max() + 1 + margin, width), min(rows.max() + 1 + margin, height)], np.float32)


def propagate_boxes(model, hu_volume: np.ndarray, key_slice: int, prompts: Prompts,
                    window: tuple[float, float] | None = None, margin_px: float = 2.0,
                    min_pixels: int = 1, encoder: SliceEncoder | None = None) -> np.ndarray:
    """Segment ``hu_volume`` ``(Z, H, W)`` from the N objects prompted on ``key_slice``.

    Args:
        margin_px: pixels added on each side of the previous slice's mask box.
        min_pixels: an object whose mask has fewer pixels has vanished and stops.
        encoder: a shared `SliceEncoder` (its cache is reused); a fresh one if None.

    Returns:
        ``(Z, H, W)`` uint8 label map (object labels from ``prompts.labels``; higher wins).
    """
    depth, height, width = hu_volume.shape
    if not 0 <= key_slice < depth:
        raise PromptError(f"key_slice: {key_slice} outside the volume's {depth} slices")
    prompts = prompts.check_inside(height, width)
    encoder = encoder or SliceEncoder(model)
    out = np.zeros(hu_volume.shape, np.uint8)
    key = decode_objects(model, encoder.encode(hu_volume, [key_slice], window)[key_slice], prompts, (height, width))
    paint(out[key_slice], key.masks, prompts.labels)
    for step in (1, -1):
        alive = [i for i in range(len(prompts)) if key.masks[i].sum() >= min_pixels]
        previous = {i: key.masks[i] for i in alive}
        z = key_slice + step
        while alive and 0 <= z < depth:
            boxes = np.stack([mask_box(previous[i], margin_px, height, width) for i in alive])
            batch = Prompts(boxes=boxes, labels=prompts.labels[alive])
            # Encode ahead in the direction of travel: one batched encoder call serves the next
            # slices, at the cost of at most batch_size - 1 unused encodes where objects vanish.
            ahead = range(z, min(max(z + step * encoder.batch_size, -1), depth), step)
            pred = decode_objects(model, encoder.encode(hu_volume, ahead, window)[z], batch, (height, width))
            paint(out[z], pred.masks, batch.labels)
            keep = pred.masks.reshape(len(alive), -1).sum(axis=1) >= min_pixels
            previous = {i: m for i, m, k in zip(alive, pred.masks, keep) if k}
            alive = [i for i, k in zip(alive, keep) if k]
            z += step
    return out
