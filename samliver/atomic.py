"""Helpers for writes that are never seen half-done (temp file, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable where the OS allows it (a no-op where it cannot,
    e.g. on Windows; the rename itself has already happened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
