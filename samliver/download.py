"""Atomic, digest-checked HTTP downloads with the standard library.

`fetch` streams a URL into a hidden temporary file beside the destination, hashes it
while streaming, checks the digests, and only then moves it into place with
``os.replace``. On any failure (HTTP error, unreachable host, short read, digest
mismatch, Ctrl-C) the temporary file is removed and nothing is left behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from samliver.atomic import fsync_folder
from samliver.errors import DownloadError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30.0
USER_AGENT = "samliver-weights/1"


def fetch(
    url: str,
    target: Path,
    sha256: str | None = None,
    md5_prefix: str | None = None,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``target`` atomically; returns the file's sha256 hex digest.

    Args:
        url: http(s) or file URL.
        target: final path; its folder must exist.
        sha256: expected sha256 hex digest, checked when given.
        md5_prefix: expected leading hex digits of the MD5, checked when given.
        progress: show a tqdm progress bar on stderr.

    Raises:
        DownloadError: one line naming the URL and the cause; no file is left behind.
    """
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sha, md5 = _stream(url, out, target, progress)
            out.flush()
            os.fsync(out.fileno())
        _check_digests(target.name, url, sha.hexdigest(), md5.hexdigest(), sha256, md5_prefix)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(target.parent)
    return sha.hexdigest()


def _stream(url: str, out: BinaryIO, target: Path, progress: bool) -> tuple["hashlib._Hash", "hashlib._Hash"]:
    """Copy the response body of ``url`` into ``out``, hashing it; HTTP/network errors → DownloadError."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            total = _content_length(response)
            done = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=target.name, disable=not progress, leave=False) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    sha.update(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download of {target.name} failed: {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise DownloadError(_unreachable_message(url, target, exc)) from None
    except (OSError, http.client.HTTPException) as exc:  # TLS, short read, disk full, permissions
        raise DownloadError(f"download of {target.name} from {url} into {target.parent} failed: {exc!r}") from None
    if total is not None and done != total:
        raise DownloadError(
            f"download of {target.name} from {url} stopped after {done} of {total} bytes; try again"
        )
    return sha, md5


def _content_length(response) -> int | None:
    """The response's Content-Length, or None when absent or malformed."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _unreachable_message(url: str, target: Path, exc: BaseException) -> str:
    """One line for an offline / refused / timed-out download."""
    reason = getattr(exc, "reason", exc)
    host = urllib.parse.urlsplit(url).netloc or url
    return (
        f"could not reach {host} to download {target.name} ({reason}); check the network, "
        f"or copy {target.name} into {target.parent} by hand"
    )


def _check_digests(
    name: str, url: str, sha_hex: str, md5_hex: str, sha256: str | None, md5_prefix: str | None
) -> None:
    """Raise DownloadError when a known digest does not match the downloaded bytes."""
    if sha256 and sha_hex != sha256.lower():
        raise DownloadError(
            f"downloaded {name} from {url} has sha256 {sha_hex} but {sha256.lower()} was expected; file discarded"
        )
    if md5_prefix and not md5_hex.startswith(md5_prefix.lower()):
        raise DownloadError(
            f"downloaded {name} from {url} has MD5 {md5_hex} but it should start with "
            f"{md5_prefix.lower()}; file discarded"
        )
