"""CT and label-map I/O: NIfTI files and DICOM series, reoriented to one canonical orientation.

SimpleITK, nibabel and pydicom are imported only when a file is read or written.
"""

from __future__ import annotations

from samliver.io.ct import CTVolume, SourceInfo, load_ct, load_label
from samliver.io.save import save_image, save_mask

__all__ = ["CTVolume", "SourceInfo", "load_ct", "load_label", "save_image", "save_mask"]
