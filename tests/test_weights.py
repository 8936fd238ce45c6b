"""The weights store: manifest, folders, atomic digest-checked downloads, verify, CLI.

Downloads go only to a throw-away http.server on 127.0.0.1; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from samliver import weights_store as weights  # noqa: E402
from samliver.cli import weights_cmd  # noqa: E402
from samliver.errors import DownloadError, SamliverError, WeightsNotFoundError  # noqa: E402

FAKE = "fake_model"
FAKE_FILE = "fake_ckpt.pth"
PAYLOAD = bytes(range(256)) * 6000  # 1.5 MB: several read chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
ORIGINAL_MANIFEST = weights.manifest
REAL_MANIFEST = weights.manifest()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private weights/cache folders, no proxies, and a manifest that also knows FAKE."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAMLIVER_WEIGHTS", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SAMLIVER_WEIGHTS_BASE_URL", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    set_fake_entry(monkeypatch)
    return tmp_path


def set_fake_entry(monkeypatch, **overrides) -> None:
    """Patch the manifest so FAKE exists with the payload's digests (or ``overrides``)."""
    entry = {"file": FAKE_FILE, "url": None, "md5_prefix": PAYLOAD_MD5[:6], "sha256": PAYLOAD_SHA,
             "description": "test payload"}
    entry.update(overrides)
    models = dict(REAL_MANIFEST, **{FAKE: entry})
    monkeypatch.setattr(weights, "manifest", lambda: {k: dict(v) for k, v in models.items()})


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Base URL of an HTTP server on 127.0.0.1 serving a folder that holds FAKE_FILE."""
    served = tmp_path / "served"
    served.mkdir()
    (served / FAKE_FILE).write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(argv: list[str]) -> int:
    """Run ``samliver <argv>`` through a minimal parser, as the main CLI will."""
    parser = argparse.ArgumentParser(prog="samliver")
    weights_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- manifest


def test_manifest_lists_every_model_with_a_well_formed_entry():
    expected = {"sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b", "sam2.1_hiera_tiny",
                "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large", "medsam2",
                "samliver_tiny"}
    assert expected <= set(REAL_MANIFEST)
    for name in expected:
        entry = weights.manifest_entry(name)
        assert entry["name"] == name and entry["file"] and isinstance(entry["description"], str)
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert entry["md5_prefix"] is None or re.fullmatch(r"[0-9a-f]{6,32}", entry["md5_prefix"])
        assert entry["url"] is None or entry["url"].startswith("https://")


def test_manifest_entry_details():
    for name in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        entry = weights.manifest_entry(name)
        assert entry["md5_prefix"] in entry["file"]  # SAM names carry the MD5's first 6 hex
        assert entry["url"].endswith("/segment_anything/" + entry["file"])
    assert weights.manifest_entry("medsam2")["url"] == (
        "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt")
    assert weights.manifest_entry("samliver_tiny")["url"] is None


def test_manifest_entry_unknown_name_lists_known():
    with pytest.raises(ValueError, match="sam_vit_b"):
        weights.manifest_entry("no_such_model")


def test_manifest_returns_a_copy():
    first = ORIGINAL_MANIFEST()
    first["sam_vit_b"]["sha256"] = "tampered"
    assert ORIGINAL_MANIFEST()["sam_vit_b"]["sha256"] != "tampered"


# ---------------------------------------------------------------- folders


def test_env_folder_takes_precedence(isolated):
    env, cache = isolated / "env", isolated / "xdg" / "samliver" / "weights"
    dirs = weights.search_dirs()
    assert dirs[0] == env and dirs[-1] == cache and weights.bundled_dir() in dirs
    assert weights.download_dir() == env
    for folder in (cache, env):
        folder.mkdir(parents=True)
        (folder / FAKE_FILE).write_bytes(b"x")
    assert weights.find_checkpoint(FAKE) == env / FAKE_FILE
    (env / FAKE_FILE).unlink()
    assert weights.find_checkpoint(FAKE) == cache / FAKE_FILE


def test_download_dir_without_env(isolated, monkeypatch):
    monkeypatch.delenv("SAMLIVER_WEIGHTS")
    monkeypatch.setattr(weights, "_is_source_checkout", lambda folder: False)
    assert weights.download_dir() == isolated / "xdg" / "samliver" / "weights"
    monkeypatch.setattr(weights, "_is_source_checkout", lambda folder: True)
    assert weights.download_dir() == weights.bundled_dir()
    assert weights.search_dirs()[0] == weights.bundled_dir()


def test_find_checkpoint_error_names_file_folders_and_command(isolated):
    with pytest.raises(WeightsNotFoundError) as info:
        weights.find_checkpoint("sam_vit_b")
    message = str(info.value)
    assert "\n" not in message
    assert "sam_vit_b_01ec64.pth" in message and str(isolated / "env") in message
    assert "samliver weights download sam_vit_b" in message


def test_bundled_tiny_model_is_found_in_the_package():
    assert weights.find_checkpoint("samliver_tiny") == weights.bundled_dir() / "samliver_tiny.safetensors"


def test_find_checkpoint_error_for_bundled_model_says_how_to_provide_it(isolated, monkeypatch):
    """An install whose bundled file went missing: the message names the file and how to make it."""
    empty = isolated / "package_weights"
    empty.mkdir()
    (empty / "manifest.json").write_bytes((weights.bundled_dir() / "manifest.json").read_bytes())
    monkeypatch.setattr(weights, "bundled_dir", lambda: empty)
    with pytest.raises(WeightsNotFoundError, match=r"samliver_tiny\.safetensors.*pretrain_tiny\.sh.*--checkpoint PATH"):
        weights.find_checkpoint("samliver_tiny")


# ---------------------------------------------------------------- download


def test_download_success_writes_file_and_record(isolated, server):
    path = weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    assert path == isolated / "env" / FAKE_FILE and path.read_bytes() == PAYLOAD
    assert (isolated / "env" / (FAKE_FILE + ".sha256")).read_text() == f"{PAYLOAD_SHA}  {FAKE_FILE}\n"
    assert files_in(isolated / "env") == [FAKE_FILE, FAKE_FILE + ".sha256"]
    assert weights.find_checkpoint(FAKE) == path


def test_download_cli_prints_path_and_digest(isolated, server, capsys):
    dest = isolated / "elsewhere"
    assert cli(["weights", "download", FAKE, "--url", f"{server}/{FAKE_FILE}",
                "--dest", str(dest), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"{PAYLOAD_SHA}  {dest / FAKE_FILE}"


def test_download_from_mirror_base_url(isolated, server, monkeypatch):
    monkeypatch.setenv("SAMLIVER_WEIGHTS_BASE_URL", server + "/")
    assert weights.download(FAKE, progress=False).read_bytes() == PAYLOAD


@pytest.mark.parametrize("field, value", [("sha256", "0" * 64), ("md5_prefix", "ffffff")])
def test_download_digest_mismatch_leaves_nothing(isolated, server, monkeypatch, field, value):
    set_fake_entry(monkeypatch, **{field: value})
    with pytest.raises(DownloadError, match="sha256|MD5") as info:
        weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    assert "\n" not in str(info.value)
    assert files_in(isolated / "env") == []


def test_download_http_404_leaves_nothing(isolated, server):
    with pytest.raises(DownloadError, match="HTTP 404"):
        weights.download(FAKE, url=f"{server}/missing.pth", progress=False)
    assert files_in(isolated / "env") == []


def test_download_unreachable_host_says_so_and_leaves_nothing(isolated):
    with pytest.raises(DownloadError) as info:
        weights.download(FAKE, url=f"http://127.0.0.1:{closed_port()}/{FAKE_FILE}", progress=False)
    message = str(info.value)
    assert "could not reach 127.0.0.1" in message and "by hand" in message and "\n" not in message
    assert str(isolated / "env") in message
    assert files_in(isolated / "env") == []


def test_failed_download_keeps_existing_file(isolated, server, monkeypatch):
    weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    set_fake_entry(monkeypatch, sha256="0" * 64)
    with pytest.raises(DownloadError):
        weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    assert (isolated / "env" / FAKE_FILE).read_bytes() == PAYLOAD
    assert files_in(isolated / "env") == [FAKE_FILE, FAKE_FILE + ".sha256"]


def test_download_without_source_is_a_clear_error():
    with pytest.raises(DownloadError, match="no download source.*--checkpoint PATH"):
        weights.download("samliver_tiny", progress=False)


# ---------------------------------------------------------------- verify


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert weights.sha256_file(path) == PAYLOAD_SHA


def test_verify_detects_corruption(isolated, server, capsys):
    path = weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    [result] = weights.verify(FAKE)
    assert (result.status, result.path, result.sha256) == ("ok", path, PAYLOAD_SHA)
    data = bytearray(PAYLOAD)
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    [result] = weights.verify(FAKE)
    assert result.status == "mismatch" and "sha256" in result.detail
    assert cli(["weights", "verify", FAKE]) == 1
    assert "mismatch" in capsys.readouterr().out


def test_verify_falls_back_to_record_then_unverified(isolated, server, monkeypatch):
    set_fake_entry(monkeypatch, sha256=None, md5_prefix=None)
    path = weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    [result] = weights.verify(FAKE)
    assert result.status == "ok" and FAKE_FILE + ".sha256" in result.detail
    path.write_bytes(PAYLOAD + b"!")
    assert weights.verify(FAKE)[0].status == "mismatch"
    weights.record_path(path).unlink()
    assert weights.verify(FAKE)[0].status == "unverified"


def test_verify_all_reports_missing(isolated):
    results = {r.name: r for r in weights.verify()}
    assert set(REAL_MANIFEST) <= set(results)
    assert results["sam_vit_h"].status == "missing" and results["sam_vit_h"].path is None


def test_cli_verify_named_missing_is_a_one_line_user_error():
    with pytest.raises(SamliverError, match="samliver weights download sam_vit_b"):
        cli(["weights", "verify", "sam_vit_b"])


def test_cli_list(isolated, server, capsys):
    weights.download(FAKE, url=f"{server}/{FAKE_FILE}", progress=False)
    assert cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "sam2.1_hiera_large" in out and "samliver_tiny" in out
    assert str(isolated / "env" / FAKE_FILE) in out
    assert f"downloads go to {isolated / 'env'}" in out


def test_cli_rejects_unknown_model():
    with pytest.raises(SystemExit):
        cli(["weights", "download", "no_such_model"])
