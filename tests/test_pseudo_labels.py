"""Pseudo-labels (`samliver.prompts.pseudo_labels`) and self-training (`samliver.training.self_training`):
the confidence filter, the pseudo-label volumes and prompts, prompt sources, and a one-round run.
Offline, seeded, CPU; samliver_tiny with random weights on tiny phantoms."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import samliver
from samliver.data import load_dataset, make_phantom
from samliver.errors import DatasetError, PromptError
from samliver.evaluation.metrics import dice
from samliver.io import load_ct, load_label, save_image
from samliver.predictor import Predictor
from samliver.prompts import Prompts, boxes_from_mask
from samliver.prompts.pseudo_labels import (ConfidenceFilter, PseudoObject, _judge, jitter_prompts, mask_dice,
                                            prompts_from_label, pseudo_label)
from samliver.prompts.pseudo_sources import prompt_source
from samliver.training import resolve
from samliver.training.config import ConfigError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """samliver_tiny with seeded random weights, and a tiny phantom (16 x 64 x 64, liver and tumours)."""
    torch.manual_seed(0)
    return samliver.load_model("samliver_tiny", checkpoint="random").eval(), make_phantom(3, preset="tiny")


def write_prompts(folder: Path, spec: str) -> None:
    """One prompts JSON file per case of ``spec``: tight ground-truth boxes (an annotator's boxes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in load_dataset(spec):
        objects = [{"slice": z, "box": box.tolist(), "label": int(label)}
                   for z, p in prompts_from_label(case.label).items() for box, label in zip(p.boxes, p.labels)]
        (folder / f"{case.name}.json").write_text(json.dumps({"objects": objects}))


# ------------------------------------------------------------------ the filter


def test_judge_drops_by_score_stability_size_and_lone_tumours():
    s = ConfidenceFilter(min_iou=0.5, min_stability=0.8, min_pixels=10)
    found = [PseudoObject(0, 1, 0.9, 0.95, 500, True), PseudoObject(0, 2, 0.9, 0.5, 40, True),
             PseudoObject(0, 2, 0.3, 0.99, 40, True), PseudoObject(0, 2, 0.9, 0.99, 5, True),
             PseudoObject(0, 2, 0.6, 0.81, 40, True)]
    _judge(found, s, liver_wanted=True)
    assert [(o.kept, o.reason) for o in found] == [
        (True, None), (False, "unstable under prompt jitter"), (False, "low predicted IoU"), (False, "too small"),
        (True, None)]
    # the same slice without a confident liver: its tumours go too (a label map counts them as liver)
    lone = [PseudoObject(0, 1, 0.2, 0.95, 500, True), PseudoObject(0, 2, 0.9, 0.99, 40, True)]
    _judge(lone, s, liver_wanted=True)
    assert [o.reason for o in lone] == ["low predicted IoU", "no confident liver on its slice"]
    tumour_only = [PseudoObject(0, 2, 0.9, 0.99, 40, True)]
    _judge(tumour_only, s, liver_wanted=False)
    assert tumour_only[0].kept
    with pytest.raises(PromptError, match="min_stability must lie in"):
        ConfidenceFilter(min_stability=1.5)


def test_mask_dice_and_jitter_bounds():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 20, 20)) > 0.5, rng.random((3, 20, 20)) > 0.6
    b[2] = False
    a[2] = False
    assert np.allclose(mask_dice(a, b)[:2], [dice(a[i], b[i]) for i in range(2)]) and mask_dice(a, b)[2] == 1.0
    prompts = Prompts(boxes=np.array([[10, 10, 50, 30], [0, 0, 4, 4]], np.float32),
                      points=np.array([[[20, 20]], [[1, 1]]], np.float32), point_labels=np.ones((2, 1), int),
                      labels=np.array([1, 2]))
    s = ConfidenceFilter(box_jitter=0.1, box_jitter_max_px=3, point_jitter_px=2)
    for seed in range(20):
        j = jitter_prompts(prompts, 40, 60, s, np.random.default_rng(seed))
        reach = np.array([[3, 2, 3, 2], [0.4, 0.4, 0.4, 0.4]])       # min(10 % of the side, 3 px)
        assert (np.abs(j.boxes - prompts.boxes) <= reach + 1e-5).all()
        assert (j.boxes[:, 2] > j.boxes[:, 0]).all() and (j.boxes >= 0).all() and (j.boxes[:, 2] <= 60).all()
        assert (np.abs(j.points - prompts.points) <= 2 + 1e-5).all() and (j.points >= 0).all()
        assert j.labels.tolist() == [1, 2] and j.point_labels.tolist() == [[1], [1]]
    again = jitter_prompts(prompts, 40, 60, s, np.random.default_rng(7))
    assert np.array_equal(again.boxes, jitter_prompts(prompts, 40, 60, s, np.random.default_rng(7)).boxes)


def test_unstable_object_is_dropped_and_stability_matches_an_independent_decode(tiny):
    model, case = tiny
    z = int(np.flatnonzero((case.label == 2).any(axis=(1, 2)))[0])
    h, w = case.label.shape[1:]
    boxes = prompts_from_label(case.label)[z].boxes[:2]        # the liver and one tumour on slice z
    prompts = {z: Prompts(boxes=boxes, labels=np.array([1, 2]))}
    s = ConfidenceFilter(min_iou=0.0, min_stability=0.0, jitter_rounds=3, box_jitter=0.3, box_jitter_max_px=8,
                         require_liver=False)
    first = pseudo_label(model, case.image, prompts, settings=s, seed=5)
    # independently: one Predictor.predict per jittered box, Dice from samliver.evaluation.metrics
    predictor = Predictor(model)
    predictor.set_image(case.image.array[z])
    ref = predictor.predict(box=boxes, labels=[1, 2]).masks
    rng = np.random.default_rng([5, z])
    runs = [jitter_prompts(prompts[z], h, w, s, rng) for _ in range(3)]
    expected = [np.mean([dice(predictor.predict(box=r.boxes[i]).masks[0], ref[i]) for r in runs]) for i in range(2)]
    assert np.allclose([o.stability for o in first.objects], expected, atol=1e-6)
    assert np.allclose([o.score for o in first.objects], predictor.predict(box=boxes).scores, atol=1e-5)
    assert expected[0] != expected[1]
    # a threshold between the two: the object whose jittered masks disagree more is dropped
    cut = float(np.mean(expected))
    shaky, steady = int(np.argmin(expected)), int(np.argmax(expected))
    second = pseudo_label(model, case.image, prompts, settings=ConfidenceFilter(
        min_iou=0.0, min_stability=cut, jitter_rounds=3, box_jitter=0.3, box_jitter_max_px=8, require_liver=False),
        seed=5)
    assert [o.kept for o in second.objects] == [i == steady for i in range(2)]
    assert second.objects[shaky].reason == "unstable under prompt jitter"
    label = np.zeros_like(case.label)
    label[z][ref[steady]] = second.objects[steady].label
    assert np.array_equal(second.label, label)
    assert np.array_equal(second.uncertain[z], ref[shaky] & (label[z] < second.objects[shaky].label))


# ------------------------------------------------------------------ volumes and prompts


def test_pseudo_label_volume_equals_segment_volume_when_all_kept(tiny):
    model, case = tiny
    model = Predictor(model)                     # one embedding cache for the four runs below
    prompts = prompts_from_label(case.label)
    for z, p in prompts.items():                 # the liver (tumours included) is one object with one box
        rows, cols = np.nonzero(case.label[z] > 0)
        assert p.labels[0] == 1 and p.boxes[0].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert len(p) == 1 + len(boxes_from_mask(case.label[z] == 2) or [])
    keep_all = ConfidenceFilter(min_iou=0.0, min_stability=0.0, jitter_rounds=0, min_pixels=1, require_liver=False)
    result = pseudo_label(model, case.image, prompts, settings=keep_all)
    segmented = model.segment_volume(case.image, prompts)
    assert result.label.dtype == np.uint8 and result.label.shape == case.label.shape
    assert len(result.objects) == sum(len(p) for p in prompts.values())
    # only empty masks can fail this filter, and they paint nothing: the volume is segment_volume's
    assert all(o.kept or o.pixels == 0 for o in result.objects) and not result.uncertain.any()
    assert np.array_equal(result.label, segmented) and set(np.unique(result.label)) == {0, 1, 2}
    rule = prompts_from_label(result.label)      # min_pixels 1: the student's boxes follow the teacher's rule
    for z, p in result.boxes.items():
        assert np.array_equal(p.boxes, rule[z].boxes) and np.array_equal(p.labels, rule[z].labels)
    assert set(result.boxes) == set(result.points) == set(np.flatnonzero(result.label.any(axis=(1, 2))))
    for z, p in result.points.items():
        x, y = p.points[:, 0].astype(int).T
        # each click lies in its own object (the liver is labels 1 and 2)
        assert np.where(p.labels == 1, result.label[z][y, x] > 0, result.label[z][y, x] == 2).all()
    # a box generator is the same first prompts by another route; both at once is refused
    via_generator = pseudo_label(model, case.image, box_generator=lambda hu, spacing: prompts, settings=keep_all)
    assert np.array_equal(via_generator.label, result.label)
    with pytest.raises(PromptError, match="not both"):
        pseudo_label(model, case.image, prompts, box_generator=lambda hu, spacing: prompts)
    tumours = pseudo_label(model, case.image, prompts, settings=keep_all, labels=(2,))
    assert {o.label for o in tumours.objects} == {2} and not (tumours.label == 1).any()


def test_head_teacher_prompts_itself(tiny):
    from samliver.adapters import apply_strategy

    torch.manual_seed(1)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, "decoder", {"head": "multiclass", "head_channels": 8})
    _, case = tiny
    predictor = Predictor(model.eval())
    auto = predictor.segment_auto(case.image)
    result = pseudo_label(predictor, case.image, settings=ConfidenceFilter(min_iou=0, min_stability=0, jitter_rounds=0,
                                                                           require_liver=False))
    expected = prompts_from_label(auto, min_pixels=10)
    assert len(expected) > 0
    assert sorted({o.slice for o in result.objects}) == sorted(expected)
    assert [o.label for o in result.objects] == [int(x) for z in sorted(expected) for x in expected[z].labels]
    # the student's prompts: one liver box if a piece of the organ (1 and 2) has at least min_pixels (10)
    # pixels, one box per tumour component that large, specks left out
    from scipy import ndimage

    for z, p in result.boxes.items():
        organ, tumours = (np.bincount(ndimage.label(m, np.ones((3, 3)))[0].ravel())[1:]
                          for m in (result.label[z] > 0, result.label[z] == 2))
        assert p.labels.tolist() == [1] * int((organ >= 10).any()) + [2] * int((tumours >= 10).sum())
        assert len(result.points[z]) == len(p)


def test_prompt_sources(tmp_path, tiny):
    with pytest.raises(PromptError, match="did you mean 'files'"):
        prompt_source("filez:x")
    with pytest.raises(PromptError, match="no such prompts folder"):
        prompt_source(f"files:{tmp_path / 'absent'}")
    write_prompts(tmp_path / "p", "phantom:tiny?n=1&seed=3")
    source = prompt_source(f"files:{tmp_path / 'p'}")
    _, case = tiny
    read = source(None, case.image, "phantom-tiny-0003")
    truth = prompts_from_label(case.label)
    assert sorted(read) == sorted(truth)
    assert all(np.array_equal(read[z][0].boxes, truth[z].boxes) for z in truth)
    assert prompt_source("auto")(None, case.image, "x") is None


def test_open_unlabelled_reads_a_folder_of_ct_files(tmp_path):
    from samliver.training.pseudo_data import open_unlabelled

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CT here"):
        open_unlabelled(str(tmp_path / "empty"))
    folder = tmp_path / "cts"
    folder.mkdir()
    cases = [make_phantom(s, preset="tiny") for s in (7, 8)]
    for name, case in zip(("b_scan", "a_scan"), cases):
        save_image(case.image, folder / f"{name}.nii.gz")
    found = open_unlabelled(str(folder))
    assert [c.name for c in found] == ["a_scan", "b_scan"]
    ct, label = found[0].load()
    assert label is None and np.allclose(ct.array, np.rint(cases[1].image.array))
    phantoms = open_unlabelled("phantom:tiny?n=2&seed=7")
    assert [c.name for c in phantoms] == ["phantom-tiny-0007", "phantom-tiny-0008"]
    assert np.array_equal(phantoms[1].load()[1], cases[1].label)


def test_open_unlabelled_finds_dicom_series_by_header_not_suffix(tmp_path):
    from samliver.io.dicom import is_dicom_file
    from samliver.training.pseudo_data import open_unlabelled
    from tests.bad_input_files import dicom_series

    folder = tmp_path / "cts"
    series = dicom_series(folder / "scan_a", n=4)
    for k, path in enumerate(sorted(series.iterdir())):  # scanner exports often have no suffix: IM0000, ...
        path.rename(series / f"IM{k:04d}")
    (folder / "notes").mkdir()
    (folder / "notes" / "fake.dcm").write_bytes(b"not DICOM" * 20)   # a .dcm name is not DICOM
    assert is_dicom_file(series / "IM0000") and not is_dicom_file(folder / "notes" / "fake.dcm")
    found = open_unlabelled(str(folder))
    assert [c.name for c in found] == ["scan_a"]
    ct, label = found[0].load()
    assert label is None and ct.shape == (4, 16, 16) and ct.array.max() == 40


def test_open_unlabelled_refuses_a_missing_path_or_a_file(tmp_path, capsys):
    from samliver.training.cli import main
    from samliver.training.pseudo_data import open_unlabelled

    (tmp_path / "one.nii.gz").write_bytes(b"")
    for spec, says in [(tmp_path / "nowhere", "no such unlabelled-data folder or dataset"),
                       (tmp_path / "one.nii.gz", "unlabelled data must be a folder (of CT files / DICOM series "
                                                 "folders) or a dataset, not a file")]:
        with pytest.raises(DatasetError, match=re.escape(f"{spec}: {says}")):
            open_unlabelled(str(spec))
        assert main(["--pseudo-label-rounds", "1", "--unlabelled", str(spec), "--checkpoint", "random",
                     "--output-dir", str(tmp_path / "run")]) == 2
        assert capsys.readouterr().err.strip() == f"train_adapter.py: error: {spec}: {says}"
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ config, command line, a one-round run


def test_self_training_flags_and_config_errors(capsys):
    from samliver.training.cli import build_parser, main, overrides_from

    args = build_parser().parse_args(["--pseudo-label-rounds", "2", "--unlabelled", "phantom:tiny?n=2&seed=9",
                                      "--pseudo-prompts", "files:x", "--pseudo-min-iou", "0.3",
                                      "--set", "pseudo_labels.filter.jitter_rounds=2"])
    config, _ = resolve(None, overrides_from(args))
    p = config.pseudo_labels
    assert (p.rounds, p.unlabelled, p.prompts, p.filter.min_iou, p.filter.jitter_rounds, p.filter.min_stability) == \
        (2, "phantom:tiny?n=2&seed=9", "files:x", 0.3, 2, ConfidenceFilter().min_stability)
    with pytest.raises(ConfigError, match="needs unlabelled data"):
        resolve(None, {"pseudo_labels": {"rounds": 1}})
    with pytest.raises(ConfigError, match="did you mean 'auto'"):
        resolve(None, {"pseudo_labels": {"prompts": "autp"}})
    with pytest.raises(ConfigError, match="did you mean 'pseudo_labels.filter.min_iou'"):
        resolve(None, {"pseudo_labels": {"filter": {"min_iu": 0.1}}})
    assert main(["--pseudo-label-rounds", "1", "--checkpoint", "random"]) == 2
    assert capsys.readouterr().err.strip() == ("train_adapter.py: error: pseudo_labels.rounds > 0 needs unlabelled "
                                               "data: pass --unlabelled DATA")


def test_unlabelled_data_without_rounds_is_refused(capsys):
    from samliver.training.cli import main

    with pytest.raises(ConfigError, match=re.escape("pseudo_labels.rounds must be >= 1 when unlabelled data is "
                                                    "given (phantom:tiny?n=1)")):
        resolve(None, {"pseudo_labels": {"unlabelled": "phantom:tiny?n=1"}})
    config, _ = resolve(None, {"pseudo_labels": {"unlabelled": "phantom:tiny?n=1", "rounds": 1}})
    assert config.pseudo_labels.rounds == 1
    assert main(["--unlabelled", "phantom:tiny?n=1", "--checkpoint", "random"]) == 2
    assert capsys.readouterr().err.strip().startswith("train_adapter.py: error: pseudo_labels.rounds must be >= 1")


def _pseudo_config(tmp_path: Path, top: dict | None = None, **pseudo):
    """A one-round self-training config on tiny phantoms (``top``: other top-level keys, e.g. the model)."""
    values = dict(checkpoint="random", data="phantom:tiny?n=2&seed=0", split=[0.5, 0.5], max_steps=1,
                  log_with="none", output_dir=str(tmp_path / "run"), **(top or {}))
    values["pseudo_labels"] = {"rounds": 1, "unlabelled": "phantom:tiny?n=2&seed=60", **pseudo}
    return resolve(None, values)[0]


def test_auto_prompts_without_head_or_default_generator_fail_before_round_0(tmp_path):
    from samliver.prompts.generators import has_default_generator
    from samliver.training.self_training import _check_first_prompts, self_train

    assert not has_default_generator("sam_vit_b")
    with pytest.raises(ConfigError) as err:
        self_train(_pseudo_config(tmp_path, {"model": "sam_vit_b"}))
    assert str(err.value) == ("pseudo_labels.prompts auto: sam_vit_b has no default box generator and method 'lora' "
                              "trains no prompt-free head, so its teacher has no first prompts; pass --pseudo-prompts "
                              "unet:PATH (a box U-Net) or --pseudo-prompts files:FOLDER (one <case>.json per "
                              "unlabelled CT)")
    assert not (tmp_path / "run").exists()   # refused before anything is written or trained
    auto, names = prompt_source("auto"), ["phantom-tiny-0060"]
    # a prompt-free head (decoder, head: multiclass) or a default generator (samliver_tiny) gives the first prompts
    head = _pseudo_config(tmp_path, {"model": "sam_vit_b", "method": "decoder",
                                     "method_config": {"head": "multiclass"}})
    _check_first_prompts(head, auto, names)
    _check_first_prompts(_pseudo_config(tmp_path), auto, names)
    sam_head = _pseudo_config(tmp_path, {"model": "sam_vit_b", "method": "decoder"})   # head: sam
    with pytest.raises(ConfigError, match="method 'decoder' trains no prompt-free head"):
        _check_first_prompts(sam_head, auto, names)


def test_files_prompts_are_checked_for_every_case_before_round_0(tmp_path):
    from samliver.training.self_training import self_train

    write_prompts(tmp_path / "boxes", "phantom:tiny?n=2&seed=60")
    (tmp_path / "boxes" / "phantom-tiny-0061.json").unlink()
    config = _pseudo_config(tmp_path, prompts=f"files:{tmp_path / 'boxes'}")
    missing = tmp_path / "boxes" / "phantom-tiny-0061.json"
    with pytest.raises(PromptError) as err:
        self_train(config)
    assert str(err.value) == (f"{missing}: no prompts file for unlabelled case phantom-tiny-0061 (pseudo-label "
                              f"prompt source files:{tmp_path / 'boxes'} needs one <case>.json per unlabelled CT)")
    assert not (tmp_path / "run").exists()


def test_one_round_self_training(tmp_path):
    from samliver.training.self_training import self_train

    unlabelled = "phantom:tiny?n=1&seed=50"
    write_prompts(tmp_path / "boxes", unlabelled)
    config, _ = resolve(None, dict(
        method="lora", checkpoint="random", data="phantom:tiny?n=2&seed=0", test_data="phantom:tiny?n=1&seed=100",
        split=[0.5, 0.5], max_steps=2, batch_size=2, warmup_steps=1, eval_every=0, checkpoint_every=0,
        eval_at_start=False, augment=False, log_with="none", final_test=False, output_dir=str(tmp_path / "run"),
        pseudo_labels={"rounds": 1, "unlabelled": unlabelled, "prompts": f"files:{tmp_path / 'boxes'}",
                       "filter": {"min_iou": 0.0, "min_stability": 0.0, "jitter_rounds": 1}}))
    try:
        result = self_train(config)
    finally:
        _reset_accelerate()
    root = tmp_path / "run"
    record = json.loads((root / "self_training.json").read_text())
    zero, one = record["rounds"]
    assert record["status"] == "finished" and (zero["round"], one["round"]) == (0, 1)
    assert all(r["val_score"] is not None and r["val_liver_dice"] is not None for r in (zero, one))
    split0 = json.loads((root / "labelled" / "split.json").read_text())
    split1 = json.loads((root / "pseudo_1" / "split.json").read_text())
    pseudo = json.loads((root / "pseudo_1" / "pseudo_labels.json").read_text())
    assert split1["val"] == split0["val"] and split1["train"] == split0["train"] + pseudo["written"]
    assert pseudo["written"] == ["phantom-tiny-0050"]
    run1 = json.loads((root / "round_1" / "run.json").read_text())
    assert run1["data"]["train"] == split1["train"] and one["train_cases"] == zero["train_cases"] + 1
    # the student trains on the union: its slices = round 0's + every pseudo-labelled slice with an object
    extra = 0
    for name in pseudo["written"]:
        ct = load_ct(root / "pseudo_1" / "images" / f"{name}.nii.gz")
        label = load_label(root / "pseudo_1" / "labels" / f"{name}.nii.gz", like=ct)
        extra += int((label > 0).any(axis=(1, 2)).sum())
        entry = next(c for c in pseudo["cases"] if c["case"] == name)
        assert entry["slices_with_labels"] == int((label > 0).any(axis=(1, 2)).sum())
    assert extra > 0 and one["train_slices"] == zero["train_slices"] + extra
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (root / name).read_bytes() == (root / "round_1" / name).read_bytes()
    assert "| 1 | 2 (1) |" in (root / "report.md").read_text() and result.model is not None
    # a finished run is refused without --resume / --overwrite, and a resume retrains nothing
    with pytest.raises(ConfigError, match="already holds a run"):
        self_train(config)
    try:
        again = self_train(config, resume="latest")
    finally:
        _reset_accelerate()
    assert again.model is None and again.rounds == record["rounds"]


def _reset_accelerate() -> None:
    """Forget Accelerate's process-wide state, so later tests start a fresh Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
