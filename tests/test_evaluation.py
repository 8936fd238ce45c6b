"""`samliver evaluate`: runs over phantoms and the real CT, outputs, resume, refusals, settings."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import samliver
from samliver.cli.main import main
from samliver.errors import DatasetError, SamliverError
from samliver.evaluation import (EvaluationResult, RunFolderError, SettingError, evaluate, get_setting,
                                 register_setting)
from samliver.evaluation import runner as runner_module
from samliver.evaluation import settings as settings_module
from samliver.evaluation.outputs import CASE_COLUMNS, LESION_COLUMNS
from samliver.evaluation.settings import BoxSetting, SlicePromptSetting, corrective_click
from samliver.models.sam import SamSegmenter
from samliver.prompts import Prompts
from tests.conftest import TOTALSEG, needs_shared_data

PHANTOM = "phantom:tiny?n=3&seed=100"
SIX = "box,box-jitter-5mm,point-1,point-3,clicks-3,key-slice-propagate"
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """samliver_tiny random weights saved as a checkpoint (the bundled tiny weights do not exist yet)."""
    torch.manual_seed(0)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    path = tmp_path_factory.mktemp("weights") / "tiny_random.pth"
    torch.save(model.sam.state_dict(), path)
    return path


class EncodeCounter:
    """Wraps ``SamSegmenter.encode``: a digest of every image encoded."""

    def __init__(self, monkeypatch) -> None:
        self.images: list[str] = []
        original = SamSegmenter.encode

        def encode(model, pixels):
            self.images += [hashlib.sha1(p.cpu().numpy().tobytes()).hexdigest() for p in pixels]
            return original(model, pixels)
        monkeypatch.setattr(SamSegmenter, "encode", encode)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory, checkpoint):
    """One zero-shot run over a phantom split with six prompt settings, encoder calls counted."""
    mp = pytest.MonkeyPatch()
    counter = EncodeCounter(mp)
    out = tmp_path_factory.mktemp("runs") / "phantom"
    try:
        result = evaluate("samliver_tiny", PHANTOM, SIX, out, checkpoint=checkpoint, seed=7)
    finally:
        mp.undo()
    return result, out, counter.images


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_phantom_run_writes_every_output(phantom_run, checkpoint):
    result, out, _ = phantom_run
    assert isinstance(result, EvaluationResult) and result.run_dir == out
    rows = _rows(out / "per_case.csv")
    assert tuple(rows[0]) == CASE_COLUMNS
    settings = SIX.split(",")
    assert len(rows) == 3 * 2 * len(settings)
    assert {(r["case"], r["target"], r["setting"]) for r in rows} == {
        (c, t, s) for c in samliver.data.load_dataset(PHANTOM).names for t in ("liver", "tumour") for s in settings}
    for r in rows:
        for m in ("dice", "iou", "voe", "nsd"):
            assert 0.0 <= float(r[m]) <= 1.0
        assert float(r["assd"]) >= 0 and float(r["hd95"]) >= 0
    lesions = _rows(out / "per_lesion.csv")
    assert tuple(lesions[0]) == LESION_COLUMNS and {r["kind"] for r in lesions} <= {"reference", "predicted"}
    assert {r["setting"] for r in lesions} == set(settings)
    # summary.json is strict JSON (no NaN/Infinity tokens)
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"bad JSON {c}"))
    assert set(summary["summary"]) == set(settings)
    stats = summary["summary"]["box"]["liver"]["metrics"]["dice"]
    assert stats["n"] == 3 and {"mean", "sd", "median"} <= set(stats)
    assert "detection" in summary["summary"]["box"]["tumour"]
    md = (out / "summary.md").read_text()
    assert "## liver" in md and "## tumour" in md and all(f"| {s} |" in md for s in settings) and " ± " in md
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert {"dice_boxplot.png", "nsd_boxplot.png"} <= set(figures)
    assert {f.split("_")[1] for f in figures if f.startswith("overlay_")} == {"best", "median", "worst"}
    assert all((out / "figures" / f).read_bytes().startswith(PNG) for f in figures)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["name"] == "samliver_tiny" and run["model"]["adapter"] is None
    assert run["model"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert [s["name"] for s in run["settings"]] == settings
    assert run["settings"][1]["params"]["jitter_mm"] == 5.0
    assert run["data"]["spec"] == PHANTOM and len(run["data"]["cases"]) == 3
    assert run["samliver_version"] == samliver.__version__ and run["status"] == "complete"
    assert run["timings"]["encode_s"] > 0 and set(run["timings"]["decode_s"]) == set(settings)


def test_each_slice_is_encoded_once_for_all_settings(phantom_run):
    result, _, images = phantom_run
    assert images, "the encoder was never called"
    assert len(images) == len(set(images)), "a slice was encoded more than once"
    slices = sum(c.image.array.shape[0] for c in samliver.data.load_dataset(PHANTOM))
    assert len(images) <= slices
    assert result.timings["slices_encoded"] == len(images)


def test_resume_after_a_kill_recomputes_only_missing_cases(phantom_run, checkpoint, tmp_path, monkeypatch):
    _, out, _ = phantom_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    name = "phantom-tiny-0101"
    (copy / "cases" / f"{name}.json").unlink()  # as if killed while this case ran
    for f in ("per_case.csv", "summary.json"):
        (copy / f).unlink()
    counter = EncodeCounter(monkeypatch)
    evaluate("samliver_tiny", PHANTOM, SIX, copy, checkpoint=checkpoint, seed=7, resume=True, figures=False)
    assert 0 < len(counter.images) <= samliver.data.load_dataset(PHANTOM)[name].image.array.shape[0]
    strip = (lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows])
    assert strip(_rows(copy / "per_case.csv")) == strip(_rows(out / "per_case.csv"))


class Killed(Exception):
    pass


def test_killed_run_continues(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = runner_module.evaluate_case
    calls: list[str] = []
    die_at = [2]

    def watched(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == die_at[0]:
            raise Killed
        return real(*args, **kwargs)
    monkeypatch.setattr(runner_module, "evaluate_case", watched)
    with pytest.raises(Killed):
        evaluate("samliver_tiny", PHANTOM, "box", out, checkpoint=checkpoint, figures=False)
    assert len(list((out / "cases").glob("*.json"))) == 1 and not (out / "per_case.csv").exists()
    with pytest.raises(RunFolderError, match="--resume"):
        evaluate("samliver_tiny", PHANTOM, "box", out, checkpoint=checkpoint)
    calls.clear()
    die_at[0] = 0
    result = evaluate("samliver_tiny", PHANTOM, "box", out, checkpoint=checkpoint, resume=True, figures=False)
    assert calls == ["phantom-tiny-0101", "phantom-tiny-0102"] and len(result.rows) == 6
    assert len(_rows(out / "per_case.csv")) == 6


def test_existing_run_is_refused_unless_resume_or_force(phantom_run, checkpoint, tmp_path):
    _, out, _ = phantom_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(RunFolderError, match="holds another run.*--resume.*--force"):
        evaluate("samliver_tiny", PHANTOM, "box", copy, checkpoint=checkpoint)
    with pytest.raises(RunFolderError, match="differs in settings"):
        evaluate("samliver_tiny", PHANTOM, "box", copy, checkpoint=checkpoint, seed=7, resume=True)
    result = evaluate("samliver_tiny", PHANTOM, "box", copy, checkpoint=checkpoint, force=True, max_cases=1,
                      figures=False)
    assert len(result.rows) == 2 and len(list((copy / "cases").glob("*.json"))) == 1
    assert not (copy / "figures").exists()


def test_unknown_setting_lists_the_valid_ones(capsys):
    with pytest.raises(SettingError, match=r"unknown prompt setting 'boxx'; valid settings: box.*clicks-5.*key-slice"):
        get_setting("boxx")
    code = main(["evaluate", "--model", "samliver_tiny", "--data", PHANTOM, "--prompts", "box,point-x", "-o", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "point-x" in err and "valid settings" in err and "Traceback" not in err


def test_model_adapter_mismatch_is_refused(checkpoint, tmp_path, capsys):
    from samliver.adapters import apply_strategy, save_adapter

    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, "decoder", {"head": "sam"})
    adapter = save_adapter(model, tmp_path / "adapter")
    # trained on random weights, loaded on a checkpoint
    with pytest.raises(SamliverError, match="base checkpoint"):
        evaluate("samliver_tiny", PHANTOM, "box", tmp_path / "a", checkpoint=checkpoint, adapter=adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model": "sam_vit_b"}))
    code = main(["evaluate", "--model", "samliver_tiny", "--checkpoint", "random", "--adapter", str(adapter),
                 "--data", PHANTOM, "--prompts", "box", "-o", str(tmp_path / "b")])
    assert code == 2 and "trained on 'sam_vit_b'" in capsys.readouterr().err


def test_dataset_without_labels_is_refused(tmp_path, checkpoint):
    src = TOTALSEG / "example_ct_sm.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} is absent")
    (tmp_path / "images").mkdir()
    shutil.copy(src, tmp_path / "images" / "ct.nii.gz")
    with pytest.raises(DatasetError, match="no labels/ folder"):
        evaluate("samliver_tiny", str(tmp_path), "box", tmp_path / "run", checkpoint=checkpoint)
    (tmp_path / "labels").mkdir()
    with pytest.raises(DatasetError, match="label file labels/ct.nii.gz is missing"):
        evaluate("samliver_tiny", str(tmp_path), "box", tmp_path / "run", checkpoint=checkpoint)
    assert not (tmp_path / "run").exists()
    ct = samliver.load_ct(src)
    samliver.save_mask(np.zeros(ct.array.shape, np.uint8), like=ct, path=tmp_path / "labels" / "ct.nii.gz")
    with pytest.raises(DatasetError, match="case ct: its label volume is empty"):
        evaluate("samliver_tiny", str(tmp_path), "box", tmp_path / "run", checkpoint=checkpoint)


def test_head_setting_needs_a_head_and_shares_the_encoder(checkpoint, monkeypatch):
    from samliver.adapters import apply_strategy

    with pytest.raises(SamliverError, match="no prompt-free head"):
        evaluate("samliver_tiny", PHANTOM, "box,head", None, checkpoint=checkpoint)
    model = samliver.load_model("samliver_tiny", checkpoint=checkpoint)
    apply_strategy(model, "decoder", {"head": "multiclass"})
    counter = EncodeCounter(monkeypatch)
    result = evaluate(model, PHANTOM, "box,head", None, max_cases=1)
    depth = samliver.data.load_dataset(PHANTOM)[0].image.array.shape[0]
    assert len(counter.images) == len(set(counter.images)) == depth  # the head needs every slice, once
    assert {(r["target"], r["setting"]) for r in result.rows} == {(t, s) for t in ("liver", "tumour")
                                                                   for s in ("box", "head")}


def test_registered_setting_runs(checkpoint, monkeypatch):
    monkeypatch.setattr(settings_module, "_REGISTRY", list(settings_module._REGISTRY))  # keep the test's setting local

    @register_setting(r"centre-box-(?P<px>\d+)", "centre-box-4", "test: a small box at each object's centre")
    class CentreBox(SlicePromptSetting):
        def __init__(self, px: int) -> None:
            self.px = px

        @classmethod
        def from_match(cls, m):
            return cls(int(m["px"]))

        def slice_prompts(self, ref_2d, ctx, rng):
            rows, cols = np.nonzero(ref_2d)
            cy, cx = rows.mean(), cols.mean()
            return Prompts(boxes=[[cx - self.px, cy - self.px, cx + self.px, cy + self.px]])

    result = evaluate("samliver_tiny", PHANTOM, ["centre-box-4"], None, checkpoint=checkpoint, max_cases=1,
                      targets="liver")
    assert [r["setting"] for r in result.rows] == ["centre-box-4"] and result.rows[0]["pred_voxels"] > 0


def test_setting_names_and_parameters():
    assert get_setting("box-jitter-5mm").params() == {"jitter_mm": 5.0, "jitter_px": 0.0}
    assert get_setting("box-jitter-3px").params()["jitter_px"] == 3.0
    assert get_setting("point-3-neg-1").params() == {"n_pos": 3, "n_neg": 1, "multimask": False}
    assert get_setting("point-1").multimask
    assert get_setting("clicks-5").params()["clicks"] == 5
    with pytest.raises(SettingError, match="listed twice"):
        samliver.evaluation.parse_settings("box,box")


def test_jitter_in_mm_follows_the_spacing():
    class Ctx:
        spacing = (5.0, 0.5, 2.0)  # rows 0.5 mm, columns 2 mm

    ref = np.zeros((200, 200), bool)
    ref[80:120, 80:120] = True
    exact = np.array([80, 80, 120, 120], np.float32)
    moves = np.stack([BoxSetting(jitter_mm=4.0).slice_prompts(ref, Ctx, np.random.default_rng(i)).boxes[0] - exact
                      for i in range(200)])
    assert np.abs(moves[:, [0, 2]]).max() <= 2.0 + 1e-6 and np.abs(moves[:, [0, 2]]).max() > 1.5  # 4 mm / 2 mm
    assert np.abs(moves[:, [1, 3]]).max() <= 8.0 + 1e-6 and np.abs(moves[:, [1, 3]]).max() > 6.0  # 4 mm / 0.5 mm


def test_corrective_click_targets_the_largest_error_region():
    ref = np.zeros((40, 40), bool)
    ref[5:25, 5:25] = True
    pred = ref.copy()
    pred[5:25, 5:10] = False  # a 20x5 miss
    pred[30:33, 30:33] = True  # a 3x3 false positive
    x, y, label = corrective_click(pred, ref)
    assert label == 1 and 5 <= x < 10 and 5 <= y < 25
    pred[5:25, 5:10] = True
    x, y, label = corrective_click(pred, ref)
    assert (x, y, label) == (31.0, 31.0, 0)
    assert corrective_click(ref, ref) is None


def test_compare_prints_the_difference_table(phantom_run, capsys):
    _, out, _ = phantom_run
    assert main(["evaluate", "--compare", str(out), str(out)]) == 0
    text = capsys.readouterr().out
    assert "| box | liver | dice |" in text and "+0.0000" in text
    assert main(["evaluate", "--compare", str(out), str(out / "nothing")]) == 2


@needs_shared_data
def test_real_ct_run_with_the_tiny_model(tmp_path, capsys):
    """The real CT (liver label only) through the CLI with the bundled samliver_tiny weights;
    numbers are reported, not asserted (the reference is a TotalSegmentator prediction)."""
    data = tmp_path / "data"
    for sub, src in (("images", TOTALSEG / "example_ct_sm.nii.gz"),
                     ("labels", TOTALSEG / "example_seg_fast" / "liver.nii.gz")):
        (data / sub).mkdir(parents=True)
        shutil.copy(src, data / sub / "ct.nii.gz")
    out = tmp_path / "run"
    code = main(["evaluate", "--model", "samliver_tiny", "--data", str(data),
                 "--prompts", "box,box-jitter-5mm,point-1,key-slice-propagate", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = _rows(out / "per_case.csv")
    liver = [r for r in rows if r["target"] == "liver"]
    assert len(liver) == 4 and all(0.0 <= float(r["dice"]) <= 1.0 for r in liver)
    assert all(r["ref_voxels"] == "0" for r in rows if r["target"] == "tumour")  # no tumour label: empty reference
    for name in ("per_lesion.csv", "summary.json", "summary.md", "figures/dice_boxplot.png", "run.json"):
        assert (out / name).is_file(), name
    with capsys.disabled():
        print("\nreal CT, bundled samliver_tiny:",
              ", ".join(f"{r['setting']} Dice {float(r['dice']):.3f} NSD {float(r['nsd']):.3f}" for r in liver))
