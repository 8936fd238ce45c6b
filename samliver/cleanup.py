"""3D cleanup of liver/tumour label maps ``(Z, Y, X)`` (0 background, 1 liver, 2 tumour).

The liver organ is labels 1 and 2 together (as LiTS scores it). Connected components are
3D with 26-connectivity (voxels touching by a face, edge or corner), as lesions are counted in
`samliver.evaluation.lesion_sizes`; holes are filled slice by slice (an enclosed background region
of an axial slice, e.g. a vessel or an unsegmented lesion), which also fills every hole
enclosed in 3D. scipy.ndimage does the labelling and filling.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LIVER, TUMOUR = 1, 2
_CONN_26 = np.ones((3, 3, 3), bool)


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label map: expected (Z, Y, X), got shape {labels.shape}")
    return labels


def constrain_tumours(liver: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Join a liver mask and a tumour mask ``(Z, Y, X)`` bool into labels, keeping the tumours that touch the liver.

    A tumour component (3D, 26-connected) is kept whole when it touches the liver (overlaps it or is
    26-adjacent to it) and is written as 2, over the liver; other tumour components are dropped. A kept
    lesion is not clipped to the liver mask: one at the liver's edge may bulge beyond it (as exophytic
    lesions do); with LiTS's convention its voxels then belong to the liver organ (labels 1 and 2).

    Returns:
        ``(Z, Y, X)`` uint8: 1 liver, 2 tumour, 0 elsewhere (a dropped tumour leaves what the
        liver mask says there).
    """
    liver, tumour = _check(liver).astype(bool), _check(tumour).astype(bool)
    if liver.shape != tumour.shape:
        raise ValueError(f"liver {liver.shape} and tumour {tumour.shape} masks differ in shape")
    out = liver.astype(np.uint8)
    components, n = ndimage.label(tumour, structure=_CONN_26)
    if n:
        touching = np.unique(components[ndimage.binary_dilation(liver, _CONN_26) & tumour])
        out[np.isin(components, touching[touching > 0])] = TUMOUR
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a ``(Z, Y, X)`` bool mask (ties: the first in
    raster order); an empty mask stays empty."""
    components, n = ndimage.label(_check(mask).astype(bool), structure=_CONN_26)
    if n <= 1:
        return components > 0
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


def fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    """``(Z, Y, X)`` bool mask with the holes of every axial slice filled."""
    mask = _check(mask).astype(bool)
    out = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def cleanup_labels(labels: np.ndarray, keep_largest: bool = True, fill_holes: bool = True) -> np.ndarray:
    """Clean a liver/tumour label map ``(Z, Y, X)``.

    1. ``keep_largest``: the liver organ (labels 1 and 2) is reduced to its largest component;
       tumour outside it goes with the rest.
    2. ``fill_holes``: holes in the organ are filled slice by slice: as tumour where they are
       holes of the tumour, as liver otherwise.
    3. Tumour components that touch no liver voxel (label 1) are dropped (`constrain_tumours`).

    Returns:
        ``(Z, Y, X)`` uint8 in {0, 1, 2}.
    """
    labels = _check(labels)
    organ = labels >= LIVER
    tumour = labels == TUMOUR
    if keep_largest:
        organ = largest_component(organ)
        tumour &= organ
    if fill_holes:
        organ = fill_holes_slicewise(organ)
        tumour = fill_holes_slicewise(tumour) & organ
    return constrain_tumours(organ & ~tumour, tumour)
