"""Is an image CT in Hounsfield units? A cheap plausibility check for the work that needs HU.

`samliver segment`, `samliver evaluate` and dataset loading call `check_hu`; `load_ct` does not,
because it also reads label maps and other scalar volumes.

Hand-written (no imaging library offers such a check). The rule: an abdominal CT always holds air
(about -1000 HU: around the body, in the lungs, in bowel gas) or at least fat (about -100 HU), so its
darkest voxel lies well below water (0 HU). An image whose darkest voxel is above `DARKEST_HU_MAX`
is not in HU: MR magnitudes (>= 0), 8-bit exports (0..255), normalised arrays ([0, 1], z-scores),
or CT stored without its rescale intercept (air at 0 instead of -1024).
"""

from __future__ import annotations

import numpy as np

from samliver.errors import NotCTError

#: the darkest voxel of a CT in HU lies below this (fat is about -100 HU, air -1000 HU)
DARKEST_HU_MAX = -50.0


def check_hu(array: np.ndarray, where: object) -> None:
    """Raise `NotCTError` naming ``where`` (a file, folder or case) if ``array`` does not look like HU.

    Args:
        array: the image, any shape (a `CTVolume`'s ``(Z, Y, X)`` array), any numeric dtype.
        where: what to name in the message.
    """
    values = np.asarray(array)
    if values.size == 0:
        raise NotCTError(f"{where}: the image is empty")
    low, high = float(values.min()), float(values.max())
    if not low <= DARKEST_HU_MAX:
        raise NotCTError(
            f"{where}: intensities {low:g}..{high:g} do not look like CT in HU (no voxel below "
            f"{DARKEST_HU_MAX:g} HU, yet every CT holds air or fat); is it MR, an 8-bit or normalised image, "
            "or CT stored without its rescale intercept?")
