"""Voxel grids and the reorientation between a file's voxel order and samliver's canonical one.

Conventions (SimpleITK's): index axes are ``(i, j, k)`` = ``(x, y, z)``; a numpy array of a grid
is indexed ``[k, j, i]``; ``direction[:, a]`` is the unit LPS world vector of index axis ``a``;
``origin`` is the LPS world position (mm) of voxel ``(0, 0, 0)``.

The canonical orientation is the one ``SimpleITK.DICOMOrient(image, "LPS")`` produces: index
axis x runs toward patient Left, y toward Posterior, z toward Superior (the direction matrix is
the identity for a non-oblique grid). Reorienting only permutes and flips axes; it never
resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D voxel grid in LPS world coordinates.

    Attributes:
        shape_xyz: voxel counts along index axes ``(i, j, k)``.
        spacing_xyz: voxel size in mm along ``(i, j, k)``.
        origin: LPS world position (mm) of voxel ``(0, 0, 0)``, as ``(x, y, z)``.
        direction: ``(3, 3)`` float64; column ``a`` is the unit LPS vector of index axis ``a``.
    """

    shape_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    def matrix(self) -> np.ndarray:
        """``(4, 4)`` index → LPS world (mm) matrix."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing_xyz)[None, :]
        out[:3, 3] = self.origin
        return out

    def ras_affine(self) -> np.ndarray:
        """``(4, 4)`` index → RAS world (mm) matrix, NIfTI's convention."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.matrix()


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation + flips taking a file's grid to the canonical one.

    ``axes[p]`` is the file index axis that becomes canonical index axis ``p``; ``flips[p]`` says
    whether it is reversed on the way.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def _transpose(self) -> list[int]:
        # numpy axis m holds index axis 2 - m
        return [2 - self.axes[2 - m] for m in range(3)]

    def to_canonical(self, array_kji: np.ndarray) -> np.ndarray:
        """File-order array ``[k, j, i]`` → canonical ``(Z, Y, X)`` array (a view where possible)."""
        out = array_kji
        for p in range(3):
            if self.flips[p]:
                out = np.flip(out, axis=2 - self.axes[p])
        return out.transpose(self._transpose())

    def from_canonical(self, array_zyx: np.ndarray) -> np.ndarray:
        """Canonical ``(Z, Y, X)`` array → file-order array ``[k, j, i]`` (inverse of `to_canonical`)."""
        out = array_zyx.transpose(np.argsort(self._transpose()))
        for p in range(3):
            if self.flips[p]:
                out = np.flip(out, axis=2 - self.axes[p])
        return out

    def apply_to_grid(self, grid: Grid) -> Grid:
        """The canonical grid covering the same world voxels as ``grid``."""
        corner = np.zeros(3)
        direction = np.empty((3, 3))
        for p, a in enumerate(self.axes):
            sign = -1.0 if self.flips[p] else 1.0
            direction[:, p] = sign * grid.direction[:, a]
            if self.flips[p]:
                corner[a] = grid.shape_xyz[a] - 1
        direction += 0.0  # no negative zeros
        origin = np.asarray(grid.origin) + grid.direction @ (np.asarray(grid.spacing_xyz) * corner)
        return Grid(
            shape_xyz=tuple(int(grid.shape_xyz[a]) for a in self.axes),
            spacing_xyz=tuple(float(grid.spacing_xyz[a]) for a in self.axes),
            origin=tuple(float(v) for v in origin),
            direction=direction,
        )


def plan_reorientation(direction: np.ndarray) -> Reorientation:
    """Closest permutation/flip mapping a grid with ``direction`` onto LPS axes.

    Each index axis goes to the world axis it is most aligned with; pairs are assigned greedily
    by alignment so oblique grids still get a valid permutation.
    """
    d = np.asarray(direction, dtype=float)
    axes = [-1, -1, -1]
    used: set[int] = set()
    order = np.argsort(-np.abs(d), axis=None, kind="stable")
    for flat in order:
        world, index = divmod(int(flat), 3)
        if axes[world] == -1 and index not in used:
            axes[world] = index
            used.add(index)
    flips = tuple(bool(d[p, axes[p]] < 0) for p in range(3))
    return Reorientation(axes=(axes[0], axes[1], axes[2]), flips=flips)
