"""Reliability beyond single bad inputs: batch commands that skip bad cases (unless --strict), output
folders that record what made them and refuse another run's outputs (unless --force), the HU check, and
the fallback to smaller encoder batches when the GPU runs out of memory (injected)."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import samliver
from samliver.cli.main import main
from samliver.errors import NotCTError, OutputFolderError
from samliver.evaluation import evaluate
from samliver.io.hu import check_hu
from samliver.prompts import Prompts
from samliver.provenance import PROVENANCE_FILE, claim_folder, make_record, read_provenance, write_provenance
from tests.bad_input_files import body_hu, dicom_series, liver_label, nifti, plain_dataset, prompts_file

TINY = ["--model", "samliver_tiny", "--checkpoint", "random"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """``--model samliver_tiny --checkpoint FILE`` with seeded random weights saved to FILE."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = samliver.load_model("samliver_tiny", checkpoint="random").sam.state_dict()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return ["--model", "samliver_tiny", "--checkpoint", str(path)]


def mr_like() -> np.ndarray:
    return (body_hu() + 1000).astype(np.float32)


# ------------------------------------------------------------------ the HU check


@pytest.mark.parametrize("low, ok", [(-1000.0, True), (-3024.0, True), (-51.0, True), (-50.0, True), (-49.0, False),
                                     (0.0, False), (0.2, False)])
def test_hu_check_wants_air_or_fat(low, ok):
    array = np.full((2, 3, 3), 60.0, np.float32)
    array[0, 0, 0] = low
    if ok:
        check_hu(array, "x.nii.gz")
    else:
        with pytest.raises(NotCTError, match=rf"x\.nii\.gz: intensities {low:g}\.\.60 do not look like CT in HU"):
            check_hu(array, "x.nii.gz")


def test_load_ct_reads_non_ct_images_and_labels(tmp_path):
    path = nifti(tmp_path / "mr.nii.gz", mr_like())
    assert samliver.load_ct(path).array.min() == 0  # load_ct reads any scalar volume; the HU check is separate
    assert samliver.load_ct(nifti(tmp_path / "label.nii.gz", liver_label())).array.max() == 1


# ------------------------------------------------------------------ segment over a folder


@pytest.fixture
def ct_folder(tmp_path) -> tuple[Path, Path]:
    """CTs a (good), b (good), c (MR-like), d (garbage), each with a prompts file."""
    cts, prompts = tmp_path / "cts", tmp_path / "prompts"
    prompts.mkdir()
    for name, data in (("a", body_hu()), ("b", body_hu((24, 24, 5))), ("c", mr_like())):
        nifti(cts / f"{name}.nii.gz", data)
    (cts / "d.nii.gz").write_bytes(b"not an image")
    for name in "abcd":
        prompts_file(prompts, {"objects": [{"slice": 1, "box": [4, 4, 20, 20]}]}).rename(prompts / f"{name}.json")
    (cts / "._a.nii.gz").write_bytes(b"macOS resource fork: ignored")
    return cts, prompts


def test_segment_folder_skips_bad_cts_reports_them_and_exits_1(ct_folder, tmp_path, capsys, tiny):
    cts, prompts = ct_folder
    out = tmp_path / "masks"
    code = main(["segment", str(cts), *tiny, "--prompts-file", str(prompts), "-o", str(out)])
    printed = capsys.readouterr()
    assert code == 1, printed.err
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", PROVENANCE_FILE]
    assert "segmented 2 of 4 CT(s)" in printed.out
    assert "skipped c: " in printed.out and "do not look like CT in HU" in printed.out
    assert "skipped d: " in printed.out and "not a readable NIfTI" in printed.out
    # each mask equals the single-CT command's
    single = tmp_path / "single.nii.gz"
    assert main(["segment", str(cts / "b.nii.gz"), *tiny, "--prompts-file", str(prompts / "b.json"),
                 "-o", str(single)]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "b.nii.gz").dataobj), np.asarray(nib.load(single).dataobj))
    record = read_provenance(out)
    assert record["command"] == "segment" and record["samliver_version"] == samliver.__version__
    assert record["config"]["model"] == "samliver_tiny"
    assert record["checkpoints"] == {"model": hashlib.sha256(Path(tiny[-1]).read_bytes()).hexdigest()}
    assert record["outputs"] == ["a.nii.gz", "b.nii.gz"]


def test_segment_folder_strict_stops_at_the_first_bad_ct(ct_folder, tmp_path, capsys, tiny):
    cts, prompts = ct_folder
    out = tmp_path / "new" / "masks"
    assert main(["segment", str(cts), *tiny, "--prompts-file", str(prompts), "--strict", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c.nii.gz: intensities" in err
    # a.nii.gz and b.nii.gz were written before c failed; the strict run stops there and keeps them
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", PROVENANCE_FILE]
    shutil.rmtree(tmp_path / "new")
    (cts / "a.nii.gz").write_bytes(b"broken too")
    assert main(["segment", str(cts), *tiny, "--prompts-file", str(prompts), "--strict", "-o", str(out)]) == 2
    assert not (tmp_path / "new").exists()  # nothing written: the folders made for it are gone again


def test_segment_folder_continues_its_own_run_and_refuses_another_without_force(ct_folder, tmp_path, capsys,
                                                                                 tiny):
    cts, prompts = ct_folder
    out = tmp_path / "masks"
    assert main(["segment", str(cts), *tiny, "--prompts-file", str(prompts), "-o", str(out)]) == 1
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    capsys.readouterr()
    assert main(["segment", str(cts), *tiny, "--prompts-file", str(prompts), "-o", str(out)]) == 1
    assert "a: done before, kept" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == first
    # another window is another run
    other = ["segment", str(cts), *tiny, "--prompts-file", str(prompts), "--window=-100,200", "-o", str(out)]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of another run (segment" in err and "differs in window" in err and "--force" in err
    assert main([*other, "--force"]) == 1
    assert read_provenance(out)["config"]["window"] == "-100,200"
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", PROVENANCE_FILE]


def test_segment_folder_usage_errors(ct_folder, tmp_path, capsys, tiny):
    cts, prompts = ct_folder
    for argv, message in ((["--box", "1,4,4,20,20", "-o", str(tmp_path / "o")], "--box: applies to one CT"),
                          (["--prompts-file", str(prompts / "a.json"), "-o", str(tmp_path / "o")],
                           "names a folder of CASE.json files"),
                          (["--prompts-file", str(prompts), "-o", str(tmp_path / "o.nii.gz")],
                           "-o must name an output folder")):
        assert main(["segment", str(cts), *tiny, *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.nii.gz").exists()


def test_folder_of_dicom_series_is_a_batch_but_a_series_folder_is_one_ct(tmp_path, capsys, tiny):
    from samliver.cli.segment_batch import batch_inputs, is_batch_input

    root = tmp_path / "patients"
    dicom_series(root / "p1", n=4)
    dicom_series(root / "p2", n=5, truncate=(3,))
    nifti(root / "p3.nii.gz", body_hu())
    (root / "notes.txt").write_text("not a CT")
    assert is_batch_input(root) and list(batch_inputs(root)) == ["p1", "p2", "p3"]
    (root / "p1" / "thumbnails").mkdir()  # a subfolder inside a series folder does not make it a batch
    assert not is_batch_input(root / "p1") and not is_batch_input(root / "p3.nii.gz")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("p1", "p2", "p3"):
        prompts_file(prompts, {"objects": [{"slice": 1, "box": [2, 2, 12, 12]}]}).rename(prompts / f"{name}.json")
    out = tmp_path / "masks"
    assert main(["segment", str(root), *tiny, "--prompts-file", str(prompts), "-o", str(out)]) == 1
    assert "skipped p2: " in capsys.readouterr().out  # its truncated slice
    mask = samliver.load_label(out / "p1.nii.gz", like=samliver.load_ct(root / "p1"))
    assert mask.shape == (4, 16, 16) and mask.any()


# ------------------------------------------------------------------ evaluate and data prepare over bad cases


@pytest.fixture
def mixed_dataset(tmp_path) -> Path:
    root = plain_dataset(tmp_path / "ds")  # case "case": good
    nifti(root / "images" / "mr.nii.gz", mr_like())
    nifti(root / "labels" / "mr.nii.gz", liver_label())
    nifti(root / "images" / "nolabel.nii.gz", body_hu())
    return root


def test_evaluate_skips_bad_cases_unless_strict(mixed_dataset, tmp_path, capsys):
    result = evaluate("samliver_tiny", str(mixed_dataset), "box", None, checkpoint="random", targets="liver")
    assert [r["case"] for r in result.rows] == ["case"]
    assert set(result.skipped) == {"mr", "nolabel"}
    assert "do not look like CT in HU" in result.skipped["mr"]
    assert "labels/nolabel.nii.gz is missing" in result.skipped["nolabel"]
    out = tmp_path / "run"
    argv = ["evaluate", *TINY, "--data", str(mixed_dataset), "--prompts", "box", "--targets", "liver", "--no-figures"]
    assert main([*argv, "-o", str(out)]) == 1
    printed = capsys.readouterr()
    assert "skipped mr: " in printed.out and "skipped nolabel: " in printed.out
    run = json.loads((out / "run.json").read_text())
    assert set(run["skipped"]) == {"mr", "nolabel"} and run["status"] == "complete"
    assert main([*argv, "--strict", "-o", str(tmp_path / "strict")]) == 2
    assert "labels/nolabel.nii.gz is missing" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_data_prepare_skips_bad_cases_records_provenance_and_refuses_other_settings(mixed_dataset, tmp_path, capsys):
    out = tmp_path / "cache"
    prepare = ["data", "prepare", str(mixed_dataset), "--quiet", "-o", str(out)]
    assert main(prepare) == 1
    printed = capsys.readouterr().out
    assert "1 cached" in printed and "skipped mr: " in printed and "skipped nolabel: " in printed
    record = read_provenance(out)
    assert record["command"] == "data prepare" and record["config"]["settings"]["window"] == [-160.0, 240.0]
    assert main(prepare) == 1 and "1 reused" in capsys.readouterr().out  # same settings: the cache is reused
    assert main([*prepare, "--window", "tumor"]) == 2
    assert "holds a cache built with other settings" in capsys.readouterr().err
    assert main([*prepare, "--window", "tumor", "--force"]) == 1
    assert read_provenance(out)["config"]["settings"]["window"] == [-40.0, 160.0]
    assert main([*prepare[:-1], str(tmp_path / "strict" / "cache"), "--strict"]) == 2
    assert not (tmp_path / "strict").exists()


# ------------------------------------------------------------------ provenance


def test_claim_folder_rules(tmp_path):
    record = make_record("segment", {"model": "samliver_tiny", "window": None}, {"model": "ab" * 32})
    folder = tmp_path / "out"
    assert claim_folder(folder, record) is None and not folder.exists()  # checking writes nothing
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "mask.nii.gz").write_bytes(b"mask")
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="no samliver run recorded"):
        claim_folder(folder, record)
    write_provenance(folder, {**record, "outputs": ["sub/mask.nii.gz"]})
    assert claim_folder(folder, record)["outputs"] == ["sub/mask.nii.gz"]  # the same run continues
    other = make_record("segment", {"model": "samliver_tiny", "window": [0, 1]}, {"model": "ab" * 32})
    with pytest.raises(OutputFolderError, match=r"differs in window"):
        claim_folder(folder, other)
    assert claim_folder(folder, other, force=True) is None
    assert not (folder / "sub" / "mask.nii.gz").exists() and (folder / "mine.txt").read_text() == "keep me"
    write_provenance(folder, {**record, "outputs": ["../mine.txt"]})
    with pytest.raises(OutputFolderError, match="lies outside the folder; not deleting anything"):
        claim_folder(folder, other, force=True)
    (folder / PROVENANCE_FILE).write_text("{broken")
    with pytest.raises(OutputFolderError, match="unreadable provenance record"):
        claim_folder(folder, record)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        claim_folder(tmp_path / "file", record, force=True)


# ------------------------------------------------------------------ out of GPU memory


class OutOfMemoryAbove:
    """Wraps a model's ``encode``: raises ``torch.OutOfMemoryError`` for batches above ``limit`` images."""

    def __init__(self, model, limit: int) -> None:
        self.model, self.limit, self.calls = model, limit, []
        self.encode = model.encode

    def __call__(self, pixels):
        self.calls.append(int(pixels.shape[0]))
        if pixels.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.encode(pixels)


def test_volume_inference_falls_back_to_smaller_batches_when_out_of_memory(monkeypatch):
    case = samliver.data.make_phantom(3, preset="tiny")
    prompts = {z: Prompts(boxes=[[10, 10, 50, 50]]) for z in range(1, 8)}
    torch.manual_seed(0)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    expected = samliver.Predictor(model, batch_size=8).segment_volume(case.image, prompts)
    assert expected.any()
    wrapped = OutOfMemoryAbove(model, limit=2)
    monkeypatch.setattr(model, "encode", wrapped)
    predictor = samliver.Predictor(model, batch_size=8)
    with pytest.warns(RuntimeWarning, match="out of GPU memory encoding 7 slices at once; continuing with batches "
                                            "of 3") as caught:
        mask = predictor.segment_volume(case.image, prompts)
    np.testing.assert_array_equal(mask, expected)  # the same masks, only in smaller batches
    assert len(caught) == 1  # warned once although it shrank twice
    assert wrapped.calls == [7, 3, 1, 1, 1, 1, 1, 1, 1] and predictor.encoder.batch_size == 1
    wrapped.limit = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning from the same encoder
        with pytest.raises(torch.OutOfMemoryError):  # one slice that does not fit is a real failure
            predictor.segment_volume(case.image, {9: Prompts(boxes=[[10, 10, 50, 50]])})
