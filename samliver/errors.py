"""Exceptions a user can cause. The CLI prints their message on one line and exits 2."""

from __future__ import annotations


class SamliverError(Exception):
    """Base class for errors caused by user input (files, values, checkpoints)."""


class CTReadError(SamliverError, ValueError):
    """A CT or label file cannot be read or is not a usable 3D image."""


class NotCTError(CTReadError):
    """An image read fine but its intensities are not CT Hounsfield units (MR, 8-bit, raw stored values)."""


class UnknownModelError(SamliverError, ValueError):
    """A model name that is not in the registry (the message lists the known ones)."""


class OutputFolderError(SamliverError, ValueError):
    """An output folder holds another run's outputs (``--force`` replaces them) or is unusable."""


class CheckpointError(SamliverError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model's architecture."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """A model's checkpoint is not on disk; the message names the file and the download command."""


class DownloadError(SamliverError, OSError):
    """A download failed (offline, HTTP error, digest mismatch); no file is left behind."""


class PromptError(SamliverError, ValueError):
    """A prompt is malformed, non-finite or outside the image."""


class MaskWriteError(SamliverError, ValueError):
    """A mask cannot be written: unsupported format, wrong shape or values, or an unwritable path."""


class DatasetError(SamliverError, ValueError):
    """A dataset folder, case, label map or split is unusable; the message names the folder or case."""


class TumorSynthesisError(SamliverError, ValueError):
    """Bad tumour-synthesis options or an unusable liver mask (the message names which)."""
