"""The weights store: known checkpoints, where they live on disk, download and verify.

The manifest (``manifest.json`` in the bundled ``weights/`` folder) lists each model's
file name, download source and digests. Files are looked up in, in order:
``$SAMLIVER_WEIGHTS``, the bundled folder (the repo's ``weights/`` in a source checkout),
and the user cache (``$XDG_CACHE_HOME/samliver/weights`` or ``~/.cache/samliver/weights``).
Downloads go to `download_dir()`, are digest-checked, and leave a ``<file>.sha256`` record.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from samliver.download import fetch
from samliver.errors import DownloadError, WeightsNotFoundError

ENV_DIR = "SAMLIVER_WEIGHTS"
ENV_BASE_URL = "SAMLIVER_WEIGHTS_BASE_URL"
HF_URL = "https://huggingface.co/{repo}/resolve/main/{file}"
_CHUNK = 1 << 20


# ---------------------------------------------------------------- manifest


def bundled_dir() -> Path:
    """Folder of the ``samliver.weights`` package: ``manifest.json`` and small bundled
    checkpoints (the repo's ``weights/`` in a source checkout)."""
    import samliver.weights

    return Path(samliver.weights.__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def _load_manifest(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["models"]


def manifest() -> dict[str, dict]:
    """All known checkpoints: model name → entry (``file``, ``url`` or ``hf_repo``/``hf_file``,
    ``md5_prefix``, ``sha256``, ``description``). A fresh copy the caller may modify."""
    return copy.deepcopy(_load_manifest(bundled_dir() / "manifest.json"))


def manifest_entry(name: str) -> dict:
    """The manifest entry of ``name``, normalised: always has ``name``, ``file``, ``url``
    (Hugging Face sources resolved to a URL; ``None`` if not downloadable), ``md5_prefix``,
    ``sha256`` and ``description``. Unknown names raise ValueError listing the known ones."""
    models = manifest()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    entry = dict(models[name])
    if not entry.get("url") and entry.get("hf_repo"):
        entry["url"] = HF_URL.format(repo=entry["hf_repo"], file=entry.get("hf_file") or entry["file"])
    for key in ("url", "md5_prefix", "sha256"):
        entry.setdefault(key, None)
    entry.setdefault("description", "")
    entry["name"] = name
    return entry


# ---------------------------------------------------------------- folders


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/samliver/weights``, else ``~/.cache/samliver/weights``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "samliver" / "weights"


def _env_dir() -> Path | None:
    value = os.environ.get(ENV_DIR)
    return Path(value).expanduser() if value else None


def _is_source_checkout(folder: Path) -> bool:
    """True for the repo's own writable ``weights/`` folder (it sits beside ``pyproject.toml``)."""
    return (folder.parent / "pyproject.toml").is_file() and os.access(folder, os.W_OK)


def download_dir() -> Path:
    """Where downloads go: ``$SAMLIVER_WEIGHTS``, else the repo's ``weights/`` in a source
    checkout, else the user cache folder."""
    env = _env_dir()
    if env is not None:
        return env
    bundled = bundled_dir()
    return bundled if _is_source_checkout(bundled) else user_cache_dir()


def search_dirs() -> list[Path]:
    """Folders searched for checkpoints, in order, without duplicates:
    ``$SAMLIVER_WEIGHTS`` (if set), the bundled folder, the user cache folder."""
    candidates = [_env_dir(), bundled_dir(), user_cache_dir()]
    dirs: list[Path] = []
    for folder in candidates:
        if folder is not None and folder.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(folder)
    return dirs


def find_checkpoint(name: str) -> Path:
    """Path of ``name``'s checkpoint in the first search folder that has it.

    Raises:
        WeightsNotFoundError: one line naming the file, the folders searched and how to get it.
    """
    entry = manifest_entry(name)
    dirs = search_dirs()
    for folder in dirs:
        path = folder / entry["file"]
        if path.is_file():
            return path
    where = ", ".join(str(d) for d in dirs)
    if entry["url"] or os.environ.get(ENV_BASE_URL):
        how = f"run `samliver weights download {name}`, or copy the file into one of those folders"
    else:
        train = f" (in a source checkout `{entry['train']}` trains it)" if entry.get("train") else ""
        how = (f"it is not downloadable (bundled with samliver / trained by the project): train it{train}, "
               "copy it into one of those folders, or pass --checkpoint PATH")
    raise WeightsNotFoundError(f"checkpoint {entry['file']} for model {name!r} not found in {where}; {how}")


# ---------------------------------------------------------------- download


def download(name: str, dest_dir: str | Path | None = None, url: str | None = None,
             progress: bool = True) -> Path:
    """Download ``name``'s checkpoint into ``dest_dir`` (default `download_dir()`), check it
    against the manifest's digests, write ``<file>.sha256`` beside it, return its path.

    ``url`` overrides the manifest's source; so does ``$SAMLIVER_WEIGHTS_BASE_URL``
    (a mirror folder URL that holds the files under their manifest names).

    Raises:
        DownloadError: offline, HTTP error, digest mismatch, or no source; nothing is left behind.
    """
    entry = manifest_entry(name)
    source = url or _mirror_url(entry["file"]) or entry["url"]
    if not source:
        raise DownloadError(
            f"model {name!r} has no download source ({entry['file']} is bundled with samliver / "
            f"trained by the project); pass --checkpoint PATH or copy the file into {download_dir()}"
        )
    dest = Path(dest_dir).expanduser() if dest_dir is not None else download_dir()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the weights folder {dest}: {exc.strerror or exc}") from None
    target = dest / entry["file"]
    digest = fetch(source, target, sha256=entry["sha256"], md5_prefix=entry["md5_prefix"],
                   progress=progress)
    write_record(target, digest)
    return target


def _mirror_url(file: str) -> str | None:
    base = os.environ.get(ENV_BASE_URL)
    return f"{base.rstrip('/')}/{file}" if base else None


def record_path(path: Path) -> Path:
    """The ``<file>.sha256`` record that sits beside a checkpoint."""
    return path.with_name(path.name + ".sha256")


def write_record(path: Path, digest: str) -> Path:
    """Write ``<file>.sha256`` (``hex  file``, sha256sum format) atomically."""
    record = record_path(path)
    tmp = record.with_name(f".{record.name}.part")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, record)
    return record


def read_record(path: Path) -> str | None:
    """The sha256 recorded for ``path`` in ``<file>.sha256``, or None if absent/unreadable."""
    try:
        text = record_path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0].lower() if text else None


# ---------------------------------------------------------------- verify


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    return _hash_file(Path(path))[0]


def _hash_file(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one model's checkpoint.

    ``status``: ``"ok"``, ``"mismatch"``, ``"unverified"`` (no known digest) or ``"missing"``.
    """

    name: str
    file: str
    status: str
    path: Path | None = None
    sha256: str | None = None
    detail: str = ""


def verify(name: str | None = None) -> list[VerifyResult]:
    """Check the checkpoint of ``name`` (default: every manifest model) against the manifest's
    sha256 / MD5 prefix where known, else against its ``.sha256`` record."""
    names = [name] if name is not None else sorted(manifest())
    return [_verify_one(n) for n in names]


def _verify_one(name: str) -> VerifyResult:
    entry = manifest_entry(name)
    try:
        path = find_checkpoint(name)
    except WeightsNotFoundError:
        return VerifyResult(name, entry["file"], "missing", detail="not in " + ", ".join(map(str, search_dirs())))
    sha, md5 = _hash_file(path)
    expected = _expected_digests(entry, path)
    if not expected:
        return VerifyResult(name, entry["file"], "unverified", path, sha, "no known digest")
    actual = {"sha256": sha, "md5": md5}
    for kind, (want, source) in expected.items():
        if not (actual[kind].startswith(want) if kind == "md5" else actual[kind] == want):
            detail = f"{kind} {actual[kind]} does not match {want} ({source})"
            return VerifyResult(name, entry["file"], "mismatch", path, sha, detail)
    sources = ", ".join(f"{kind} ({src})" for kind, (_, src) in expected.items())
    return VerifyResult(name, entry["file"], "ok", path, sha, f"matches {sources}")


def _expected_digests(entry: dict, path: Path) -> dict[str, tuple[str, str]]:
    """Known digests for ``path``: kind → (expected hex or hex prefix, where it comes from)."""
    expected: dict[str, tuple[str, str]] = {}
    if entry["sha256"]:
        expected["sha256"] = (entry["sha256"].lower(), "manifest")
    if entry["md5_prefix"]:
        expected["md5"] = (entry["md5_prefix"].lower(), "manifest")
    if not expected:
        recorded = read_record(path)
        if recorded:
            expected["sha256"] = (recorded, record_path(path).name)
    return expected
