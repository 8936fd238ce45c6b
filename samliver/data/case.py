"""`Case`: one CT with its label volume."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samliver.io import CTVolume

BACKGROUND, LIVER, TUMOR = 0, 1, 2


@dataclass(eq=False)
class Case:
    """One CT and its labels on the same grid.

    Attributes:
        name: the case's identifier within its dataset (e.g. ``"liver_7"``, ``"phantom-0003"``).
        image: the CT, ``image.array`` ``(Z, Y, X)`` float32 HU in canonical orientation.
        label: ``(Z, Y, X)`` uint8: 0 background, 1 liver, 2 tumour.
        has_liver: False where the dataset has no liver label (e.g. MSD Task08): only tumour
            targets may be trained or evaluated, and label 0 there does not mean "not liver".
        meta: free-form provenance (source files, generator version, preset, ...).
    """

    name: str
    image: CTVolume
    label: np.ndarray
    has_liver: bool = True
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label.shape != self.image.array.shape:
            raise ValueError(f"case {self.name}: label shape {self.label.shape} differs from the "
                             f"image's {self.image.array.shape}")
