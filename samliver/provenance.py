"""What produced an output folder, and refusing to mix another run's outputs into it.

An output folder of a command that writes many files (``samliver segment DIR -o OUT``, ``samliver data
prepare -o CACHE``) holds ``provenance.json``::

    {"samliver_version": "0.1.0", "command": "segment", "created": "2026-...",
     "config": {...what decides the outputs...}, "checkpoints": {"model": "<sha256>", ...},
     "key": "<sha256 of command, config and checkpoints>", "outputs": ["case_1.nii.gz", ...]}

Two runs with the same ``key`` produce the same outputs, so a second one may continue the first (keep
or redo its files). A folder that holds another key's outputs, or files no samliver run recorded, is
refused unless ``force``; with ``force`` the previous run's recorded ``outputs`` are deleted first
(only those, and only inside the folder). Evaluation and training run folders record the same facts in
their own ``run.json`` (`samliver.evaluation.outputs`, `samliver.training.run_folder`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from samliver.atomic import write_bytes_atomic
from samliver.errors import OutputFolderError

PROVENANCE_FILE = "provenance.json"


def make_record(command: str, config: Mapping[str, Any],
                checkpoints: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """A provenance record for ``command`` run with ``config`` (every option that decides the outputs,
    JSON-able) and ``checkpoints`` (name -> sha256 hex digest, None for random weights)."""
    import samliver

    checkpoints = dict(checkpoints or {})
    identity = {"command": command, "config": dict(config), "checkpoints": checkpoints}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return {"samliver_version": samliver.__version__, "command": command,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": dict(config), "checkpoints": checkpoints, "key": key, "outputs": []}


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """The ``provenance.json`` record in ``folder``, or None when there is none.

    Raises:
        OutputFolderError: the file exists but is not a provenance record.
    """
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputFolderError(f"{path}: unreadable provenance record ({exc}); use --force to replace the "
                                "folder's outputs") from None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        raise OutputFolderError(f"{path}: not a samliver provenance record; use --force to replace the folder's "
                                "outputs")
    return record


def claim_folder(folder: str | Path, record: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
    """Check that ``folder`` may receive the outputs of the run ``record`` describes; nothing is written.

    Returns:
        The previous record when ``folder`` holds the same run (same key): its outputs may be kept.
        None when the folder is absent or empty, or (with ``force``) after deleting the outputs the
        previous run recorded.

    Raises:
        OutputFolderError: ``folder`` is a file; or it holds another run's outputs, or files no samliver
            run recorded, and ``force`` is False.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return None
    try:
        old = read_provenance(folder)
    except OutputFolderError:
        if not force:
            raise
        old = None
    if old is not None and old["key"] == record["key"]:
        return old
    if not force:
        if old is None:
            raise OutputFolderError(f"{folder}: holds files that no samliver run recorded (no {PROVENANCE_FILE}); "
                                    "pass --force to write into it anyway, or choose another folder")
        differ = sorted(k for k in set(old.get("config", {})) | set(record["config"])
                        if old.get("config", {}).get(k) != record["config"].get(k))
        if old.get("checkpoints") != record["checkpoints"]:
            differ.append("checkpoints")
        if old.get("command") != record["command"]:
            differ.insert(0, "command")
        raise OutputFolderError(f"{folder}: holds the outputs of another run ({old.get('command', '?')}, created "
                                f"{old.get('created', '?')}; differs in {', '.join(differ) or 'version'}); pass "
                                "--force to replace them, or choose another folder")
    if old is not None:
        _remove_outputs(folder, old.get("outputs", []))
    return None


def write_provenance(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``folder/provenance.json`` atomically (the folder is created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROVENANCE_FILE
    write_bytes_atomic(path, (json.dumps(record, indent=2, default=str) + "\n").encode())
    return path


def missing_root(path: str | Path) -> Path | None:
    """The outermost folder on the way to ``path`` (``path`` included) that does not exist yet, or None
    when ``path`` exists: what to remove to leave nothing behind after a failed run that created it."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_outputs(folder: Path, outputs: list[Any]) -> None:
    """Delete the files a previous run recorded, refusing names that would leave ``folder``."""
    root = folder.resolve()
    paths = [(folder / str(name)).resolve() for name in outputs]
    for name, path in zip(outputs, paths):
        if root not in path.parents:
            raise OutputFolderError(f"{folder / PROVENANCE_FILE}: output {name!r} lies outside the folder; "
                                    "not deleting anything")
    for path in paths:
        if path.is_file():
            path.unlink()
    (folder / PROVENANCE_FILE).unlink(missing_ok=True)
