"""The bad-input corpus (tests/bad_inputs.py) through the Python API and the command line.

Every case: the API raises the documented `SamliverError` subclass with a one-line message naming the
file or field and the problem; each command line exits 2 with exactly that one line on stderr and no
traceback; nothing is left behind and no input file changes (the whole test folder is compared byte for
byte before and after). conftest.py prints "bad-input corpus: N cases, M passed" at the end of the run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from samliver.cli.main import main as samliver_main
from samliver.errors import SamliverError
from samliver.training import main as train_main
from tests.bad_inputs import CORPUS, Bad

TOOLS = {"samliver": (samliver_main, "samliver: error: "), "train": (train_main, "train_adapter.py: error: ")}


pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> the sha256 of its bytes ("dir" for folders, the target for symlinks)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = f"link to {path.readlink()}"
        elif path.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_corpus_ids_are_unique_and_cover_every_kind():
    ids = [case.id for case in CORPUS]
    assert len(ids) == len(set(ids))
    kinds = {i.split("-")[0] for i in ids}
    assert kinds >= {"nifti", "not", "label", "dicom", "dataset", "prompt", "box", "checkpoint", "model", "adapter",
                     "yaml", "output"}


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_bad_input(case: Bad, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = {**case.make(inputs), "in": inputs, "out": tmp_path / "out"}
    before = snapshot(tmp_path)

    with pytest.raises(SamliverError) as info:
        case.api(paths)
    message = str(info.value)
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {message}"
    assert "\n" not in message and re.search(case.says, message), message
    assert snapshot(tmp_path) == before

    run, prefix = TOOLS[case.tool]
    for argv in case.argv(paths):
        capfd.readouterr()
        code = run(argv)
        err = capfd.readouterr().err
        lines = err.splitlines()
        assert code == 2, f"{argv}: exit {code}; stderr: {err}"
        assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
        assert re.search(case.says, lines[0]), f"{argv}: {lines[0]}"
        assert snapshot(tmp_path) == before, f"{argv} left files behind or changed an input"
