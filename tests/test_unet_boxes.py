"""U-Net box prompts: boxes from known probability maps (mm margins and areas on anisotropic pixels, 3D
persistence), the box-recall metric, the network input against the training cache, save/load, checkpoint
mismatches, the shipped U-Net's recall on held-out phantoms, and a short resumable training run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from samliver.data import make_phantom, prepare_cache
from samliver.errors import CheckpointError, PromptError
from samliver.training.config import ConfigError
from samliver.prompts import Prompts
from samliver.prompts.component_boxes import MIN_AREA_MM2, box_recall, boxes_from_probabilities, class_masks
from samliver.prompts.unet_boxes import (UNetBoxGenerator, bundled_box_generator, bundled_box_path,
                                         load_box_generator)
from samliver.prompts.unet_model import BoxUNetSpec, build_unet, grey_slices

SMALL = dict(input_size=32, channels=(4, 8, 16), strides=(2, 2))


def probs_with(shape: tuple[int, int, int], liver=(), tumor=()) -> np.ndarray:
    """Softmax-like maps ``(Z, 3, Y, X)``: background 1 except in the given ``(z, rows, cols)`` regions."""
    p = np.zeros((shape[0], 3, *shape[1:]), np.float32)
    p[:, 0] = 1.0
    for channel, regions in ((1, liver), (2, tumor)):
        for z, rows, cols in regions:
            p[z, :, rows, cols] = 0.0
            p[z, channel, rows, cols] = 1.0
    return p


def generator(seed: int = 0, **spec) -> UNetBoxGenerator:
    torch.manual_seed(seed)
    s = BoxUNetSpec(**{**SMALL, **spec})
    return UNetBoxGenerator(build_unet(s), s, threshold=0.4, margin_mm=2.0, min_area_mm2=5.0, min_slices=1)


# ------------------------------------------------------------------ boxes from probabilities


def test_margin_in_mm_follows_each_axis_spacing():
    p = probs_with((3, 40, 60), liver=[(1, slice(10, 20), slice(20, 30))])
    # rows 10..19, cols 20..29 -> tight box [20, 10, 30, 20]; 4 mm = 8 rows of 0.5 mm, 2 columns of 2 mm
    out = boxes_from_probabilities(p, (5.0, 0.5, 2.0), margin_mm=4.0, min_area_mm2=0)
    assert list(out) == [1]
    np.testing.assert_array_equal(out[1].boxes, [[18, 2, 32, 28]])
    assert out[1].labels.tolist() == [1]
    swapped = boxes_from_probabilities(p, (5.0, 2.0, 0.5), margin_mm=4.0, min_area_mm2=0)
    np.testing.assert_array_equal(swapped[1].boxes, [[12, 8, 38, 22]])
    # the margin is clipped at the slice's edges (60 columns, 40 rows)
    edge = boxes_from_probabilities(probs_with((1, 40, 60), liver=[(0, slice(0, 5), slice(55, 60))]),
                                    (1.0, 1.0, 1.0), margin_mm=3.0, min_area_mm2=0)
    np.testing.assert_array_equal(edge[0].boxes, [[52, 0, 60, 8]])


def test_min_area_is_in_square_mm():
    p = probs_with((1, 30, 30), tumor=[(0, slice(5, 15), slice(5, 15))])        # 100 pixels
    kept = boxes_from_probabilities(p, (3.0, 0.5, 2.0), margin_mm=0, min_area_mm2=80)   # 100 x 0.5 x 2 = 100 mm²
    assert kept[0].labels.tolist() == [1, 2]                     # the tumour, and the liver that holds it
    assert boxes_from_probabilities(p, (3.0, 0.5, 1.0), margin_mm=0, min_area_mm2=80) == {}   # 50 mm²
    # the same pixels are 400 mm² at 2 x 2 mm, and 25 mm² at 0.5 x 0.5 mm
    assert 0 in boxes_from_probabilities(p, (3.0, 2.0, 2.0), margin_mm=0, min_area_mm2=399)
    assert boxes_from_probabilities(p, (3.0, 0.5, 0.5), margin_mm=0, min_area_mm2=26) == {}


def test_three_d_persistence_keeps_components_spanning_enough_slices():
    tumor = [(2, slice(5, 10), slice(5, 10)),                                          # one slice only
             (5, slice(20, 23), slice(20, 23)), (6, slice(23, 26), slice(23, 26)),      # touch at a corner
             (7, slice(26, 29), slice(26, 29))]
    p = probs_with((10, 40, 40), tumor=tumor)
    spacing = (2.5, 1.0, 1.0)
    assert sorted(boxes_from_probabilities(p, spacing, margin_mm=0, min_area_mm2=0, min_slices=1)) == [2, 5, 6, 7]
    three = boxes_from_probabilities(p, spacing, margin_mm=0, min_area_mm2=0, min_slices=3)
    assert sorted(three) == [5, 6, 7]
    np.testing.assert_array_equal(three[6].boxes, [[23, 23, 26, 26]] * 2)     # the liver holding it, the tumour
    assert three[6].labels.tolist() == [1, 2]
    assert boxes_from_probabilities(p, spacing, margin_mm=0, min_area_mm2=0, min_slices=4) == {}


def test_liver_box_holds_its_tumours_and_objects_are_ordered():
    p = probs_with((1, 50, 50), liver=[(0, slice(10, 30), slice(10, 40))],
                   tumor=[(0, slice(30, 36), slice(15, 21)), (0, slice(2, 4), slice(44, 47))])
    p[0, :, 40:43, 2:5] = [[[0.5]], [[0.25]], [[0.25]]]            # liver + tumour = 0.5: at the threshold, kept
    out = boxes_from_probabilities(p, (1.0, 1.0, 1.0), threshold=0.5, margin_mm=0, min_area_mm2=0)[0]
    assert out.labels.tolist() == [1, 1, 1, 2, 2]
    # liver objects (labels 1 and 2 together) in raster order of their first pixel, then tumours
    np.testing.assert_array_equal(out.boxes, [[44, 2, 47, 4], [10, 10, 40, 36], [2, 40, 5, 43],
                                              [44, 2, 47, 4], [15, 30, 21, 36]])


def test_hysteresis_grows_components_into_touching_faint_pixels_only():
    p = probs_with((1, 20, 20))
    core, rim, island, corner = (slice(5, 8), slice(5, 8)), (slice(4, 10), slice(4, 10)), (14, 14), (10, 10)
    for where, tumour in ((rim, 0.3), (core, 0.9), (island, 0.3), (corner, 0.3)):   # faint island and corner
        p[(0, 0, *where)], p[(0, 2, *where)] = 1 - tumour, tumour
    plain = class_masks(p, 0.5)[2][0]
    assert plain.sum() == 9 and plain[core].all()
    expected = np.zeros((20, 20), bool)
    expected[rim] = True
    expected[corner] = True                                            # touches the rim's corner: 8-connected
    for mask in class_masks(p, 0.5, low_threshold=0.25).values():     # liver (p1 + p2) and tumour alike
        np.testing.assert_array_equal(mask[0], expected)              # the island has no strong pixel: dropped
    np.testing.assert_array_equal(class_masks(p, 0.5, low_threshold=0.5)[2], class_masks(p, 0.5)[2])
    out = boxes_from_probabilities(p, (1, 1, 1), threshold=0.5, low_threshold=0.25, margin_mm=0, min_area_mm2=20)
    np.testing.assert_array_equal(out[0].boxes, [[4, 4, 11, 11]] * 2)  # 9 px alone would be dropped (< 20 mm²)
    assert boxes_from_probabilities(p, (1, 1, 1), threshold=0.5, margin_mm=0, min_area_mm2=20) == {}
    with pytest.raises(PromptError, match=r"low_threshold: must lie in \(0, threshold 0.5\], got 0.6"):
        class_masks(p, 0.5, low_threshold=0.6)
    with pytest.raises(PromptError, match="low_threshold: must not exceed threshold 0.4, got 0.45"):
        UNetBoxGenerator(build_unet(BoxUNetSpec(**SMALL)), BoxUNetSpec(**SMALL), threshold=0.4, low_threshold=0.45)


def test_empty_slices_have_no_entry_and_bad_input_is_refused():
    assert boxes_from_probabilities(probs_with((4, 16, 16)), (1, 1, 1)) == {}
    p = probs_with((4, 16, 16), liver=[(2, slice(3, 9), slice(3, 9))])
    assert list(boxes_from_probabilities(p, (1, 1, 1), min_area_mm2=0)) == [2]
    with pytest.raises(PromptError, match=r"expected \(Z, 3, Y, X\)"):
        boxes_from_probabilities(p[:, :2], (1, 1, 1))
    with pytest.raises(PromptError, match="spacing"):
        boxes_from_probabilities(p, (1, 0, 1))
    with pytest.raises(PromptError, match="threshold"):
        boxes_from_probabilities(p, (1, 1, 1), threshold=1.0)
    with pytest.raises(PromptError, match="min_slices"):
        UNetBoxGenerator(build_unet(BoxUNetSpec(**SMALL)), BoxUNetSpec(**SMALL), min_slices=0)
    with pytest.raises(PromptError, match=r"hu: expected a \(Z, Y, X\)"):
        generator()(np.zeros((16, 16), np.float32), (1, 1, 1))


def test_box_recall_counts_covering_boxes_of_the_right_class():
    label = np.zeros((2, 40, 40), np.uint8)
    label[0, 10:20, 10:20] = 1                       # 100 mm² liver
    label[0, 12:16, 12:16] = 2                       # 16 mm² tumour: below 20 mm², not counted for recall
    label[1, 5:15, 25:35] = 2                        # 100 mm² tumour (and liver)
    spacing = (3.0, 1.0, 1.0)
    tight = Prompts(boxes=[[8, 8, 22, 22]], labels=[1])                      # the object's box + 2 mm
    prompts = {0: tight, 1: Prompts(boxes=[[23, 3, 37, 14], [0, 0, 40, 40]], labels=[2, 1])}
    r = box_recall(prompts, label, spacing, min_area_mm2=20, margin_mm=2.0)
    # slice 1: the tumour box misses a row (90 of 100 pixels: just enough; IoU 154 / 196 with the ideal box);
    # the whole-slice liver box holds the liver but is far too large (IoU 196 / 1600)
    assert (r["liver"]["objects"], r["liver"]["found"], r["liver"]["boxes"], r["liver"]["true_boxes"]) == (2, 1, 2, 1)
    assert (r["tumor"]["objects"], r["tumor"]["found"], r["tumor"]["recall"]) == (1, 1, 1.0)
    short = {1: Prompts(boxes=[[25, 5, 35, 13]], labels=[2])}                 # 80 of 100 pixels
    assert box_recall(short, label, spacing, min_area_mm2=20)["tumor"]["found"] == 0
    wrong_class = {1: Prompts(boxes=[[25, 5, 35, 15]], labels=[1])}
    assert box_recall(wrong_class, label, spacing, min_area_mm2=20)["tumor"]["recall"] == 0.0


# ------------------------------------------------------------------ the generator


def test_network_input_is_the_training_cache(tmp_path):
    case = make_phantom(3, preset="tiny")
    spec = BoxUNetSpec(**{**SMALL, "input_size": 48, "window": (-100.0, 200.0)})
    cache = prepare_cache([case], tmp_path, {"size": 48, "window": spec.window}, progress=False)
    np.testing.assert_array_equal(grey_slices(case.image.array, spec, chunk=5), cache[case.name].image)


def test_generator_applies_the_component_rule_to_its_probabilities():
    gen = generator(context=1)
    gen.low_threshold = 0.2
    case = make_phantom(4, preset="tiny")
    hu, spacing = case.image.array[:, :, 3:], (8.0, 0.9, 0.6)          # not square: resized both ways
    probs = gen.probabilities(hu)
    assert probs.shape == (hu.shape[0], 3, *hu.shape[1:]) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    boxes = gen(hu, spacing)
    expected = boxes_from_probabilities(probs, spacing, **gen.box_params)
    assert boxes and boxes.keys() == expected.keys()
    for z in boxes:
        np.testing.assert_array_equal(boxes[z].boxes, expected[z].boxes)
        np.testing.assert_array_equal(boxes[z].labels, expected[z].labels)


def test_mirroring_averages_the_four_flipped_passes():
    plain = generator(seed=2, context=1)
    mirrored = UNetBoxGenerator(plain.net, plain.spec, mirror=True)
    hu = make_phantom(6, preset="tiny").image.array[:, 4:, 2:]             # 2 x 4 rows, 2 columns off: not square
    got = mirrored.probabilities(hu)
    # independently: the plain network on each mirrored CT, its output mirrored back, averaged
    flips = [lambda a: a, lambda a: a[..., ::-1], lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, ::-1]]
    expected = np.mean([f(plain.probabilities(np.ascontiguousarray(f(hu)))) for f in flips], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - plain.probabilities(hu)).max() > 1e-3                  # mirroring changes the maps
    # the average over a group of flips is equivariant: mirroring the CT mirrors the probabilities
    np.testing.assert_allclose(mirrored.probabilities(np.ascontiguousarray(hu[:, ::-1])), got[:, :, ::-1], atol=1e-5)
    with pytest.raises(PromptError, match="mirror: must be true or false, got 'yes'"):
        UNetBoxGenerator(plain.net, plain.spec, mirror="yes")


def test_save_and_load_give_the_same_boxes(tmp_path):
    gen = generator(seed=3, context=2)
    gen.margin_mm, gen.min_slices, gen.mirror = 4.5, 2, True
    case = make_phantom(5, preset="tiny")
    hu, spacing = case.image.array, case.image.spacing
    gen.save(tmp_path / "run", training={"note": "test"})
    gen.save(tmp_path / "elsewhere" / "mine.safetensors")
    for path in (tmp_path / "run", tmp_path / "run" / "box_unet.json", tmp_path / "elsewhere" / "mine.safetensors"):
        back = load_box_generator(path)
        assert back.settings == gen.settings and back.mirror and back.spec == gen.spec
        np.testing.assert_array_equal(back.probabilities(hu), gen.probabilities(hu))
        a, b = gen(hu, spacing), back(hu, spacing)
        assert a.keys() == b.keys() and all(np.array_equal(a[z].boxes, b[z].boxes) for z in a)
    assert json.loads((tmp_path / "run" / "box_unet.json").read_text())["training"] == {"note": "test"}
    assert load_box_generator(tmp_path / "run", margin_mm=0.0).margin_mm == 0.0
    assert not load_box_generator(tmp_path / "run", mirror=False).mirror


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_checkpoint_for_other_channels_or_size_is_refused(tmp_path):
    generator(context=1).save(tmp_path / "c1")
    generator(context=0).save(tmp_path / "c0")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "c1", mixed)
    shutil.copy(tmp_path / "c0" / "box_unet.json", mixed / "box_unet.json")
    with pytest.raises(CheckpointError) as exc:
        load_box_generator(mixed)
    message = "box_unet.safetensors: weights take 3 input channel(s) (context 1), but box_unet.json says 1"
    assert message in _one_line(exc)

    body = json.loads((tmp_path / "c1" / "box_unet.json").read_text())
    body["network"]["input_size"] = 64
    (mixed / "box_unet.json").write_text(json.dumps(body))
    with pytest.raises(CheckpointError) as exc:
        load_box_generator(mixed)
    assert "trained for 32 px input, but box_unet.json says 64 px" in _one_line(exc)

    with pytest.raises(CheckpointError) as exc:
        load_box_generator(tmp_path / "c1", input_size=128)
    assert "box U-Net for 32 px input, not the 128 px asked for" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        load_box_generator(tmp_path / "c1", in_channels=1)
    assert "box U-Net for 3 input channel(s) (context 1), not the 1 asked for" in _one_line(exc)
    with pytest.raises(CheckpointError, match="nowhere.*not found"):
        load_box_generator(tmp_path / "nowhere")


def test_a_mixed_or_malformed_pair_is_refused_naming_the_file(tmp_path):
    import hashlib

    # same architecture, other weights: only the sha256 in the JSON tells the files apart (a save that died
    # between its two writes, or a hand-copied file)
    generator(seed=1).save(tmp_path / "a")
    generator(seed=2).save(tmp_path / "b")
    body = json.loads((tmp_path / "a" / "box_unet.json").read_text())
    digest = hashlib.sha256((tmp_path / "a" / "box_unet.safetensors").read_bytes()).hexdigest()
    assert body["weights_sha256"] == digest
    shutil.copy(tmp_path / "b" / "box_unet.safetensors", tmp_path / "a" / "box_unet.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_box_generator(tmp_path / "a")
    assert "box_unet.safetensors: not the weights box_unet.json was saved with (sha256 differs)" in _one_line(exc)

    good = tmp_path / "b" / "box_unet.json"
    for name, edit, message in (
            ("list", lambda b: [b], "not a usable box U-Net config (expected a JSON object with a 'boxes' object)"),
            ("boxes", lambda b: {**b, "boxes": "0.4"}, "expected a JSON object with a 'boxes' object"),
            ("units", lambda b: {**b, "network": {**b["network"], "num_res_units": "1"}},
             "network settings MONAI's UNet refuses"),
            ("threshold", lambda b: {**b, "boxes": {**b["boxes"], "threshold": 1.5}},
             "saved boxes.threshold: must lie strictly between 0 and 1, got 1.5"),
            ("hysteresis", lambda b: {**b, "boxes": {**b["boxes"], "threshold": 0.4, "low_threshold": 0.7}},
             "saved boxes.low_threshold: must not exceed threshold 0.4, got 0.7")):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "b", folder)
        (folder / "box_unet.json").write_text(json.dumps(edit(json.loads(good.read_text()))))
        with pytest.raises(CheckpointError) as exc:
            load_box_generator(folder)
        assert str(folder) in str(exc.value) and message in _one_line(exc), name

    other = tmp_path / "gen.pt"
    other.write_bytes(b"")
    with pytest.raises(CheckpointError) as exc:
        load_box_generator(other)
    assert f"{other}: not a box U-Net file; give NAME.safetensors or NAME.json" in _one_line(exc)


# ------------------------------------------------------------------ the shipped U-Net


HELD_OUT = (1000, 1001, 1002, 1003)     # the adapter presets' test seeds; the shipped U-Net never saw them
#: issue 6's recall for objects of at least the generator's min_area_mm2 (80 mm²). The shipped U-Net reaches liver
#: 0.993 (141/142) and tumour 0.939 (31/33) here; tumour 0.941 on its own test seeds 3000-3007 (in its JSON).
MIN_RECALL = {"liver": 0.9, "tumor": 0.9}


def _seed_ranges(training: dict) -> list[list[int]]:
    """The phantom seed ranges a U-Net's training record names, its ``init``'s (stage 1) included."""
    ranges = [training[key] for key in ("data_seed_range", "test_seed_range")]
    init = training.get("init")
    return ranges + (_seed_ranges(init["training"]) if init else [])


def test_bundled_generator_finds_held_out_objects():
    path = bundled_box_path()
    assert path.stat().st_size < 10 * 2 ** 20
    training = json.loads(path.with_suffix(".json").read_text())["training"]
    for lo, hi in _seed_ranges(training):
        assert not set(range(lo, hi + 1)) & (set(HELD_OUT) | set(range(12)))
    gen = bundled_box_generator()
    assert gen.min_area_mm2 == MIN_AREA_MM2 and gen.mirror      # the size threshold the recall is promised above
    totals = {c: [0, 0] for c in ("liver", "tumor")}
    for seed in HELD_OUT:
        case = make_phantom(seed)
        boxes = gen(case.image.array, case.image.spacing)
        result = box_recall(boxes, case.label, case.image.spacing, min_area_mm2=gen.min_area_mm2,
                            margin_mm=gen.margin_mm)
        for cls, total in totals.items():
            total[0] += result[cls]["found"]
            total[1] += result[cls]["objects"]
    assert totals["tumor"][1] >= 15 and totals["liver"][1] >= 100, totals    # enough objects to mean something
    for c, (found, objects) in totals.items():
        assert found / objects >= MIN_RECALL[c], (c, totals)


# ------------------------------------------------------------------ training


def _train(tmp_path: Path, out: str, **over):
    from accelerate.state import AcceleratorState, GradientState

    from samliver.training.box_unet import train_box_unet
    from samliver.training.box_unet_config import resolve_box_unet

    values = dict(data="phantom:tiny?n=3&seed=0", test_data="phantom:tiny?n=1&seed=100", split=[0.67, 0.33],
                  network={"input_size": 32, "channels": [8, 16, 32], "strides": [2, 2]}, crop=24,
                  boxes={"min_area_mm2": 40.0}, max_steps=16, batch_size=4, lr=3e-3, scheduler="constant",
                  warmup_steps=2, eval_every=8, checkpoint_every=8, log_every=1, log_with="none",
                  cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / out))
    resume = over.pop("resume", None)
    config, _ = resolve_box_unet(None, {**values, **over})
    try:
        return train_box_unet(config, resume=resume)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in e]


def test_training_learns_exports_and_resumes_to_the_same_weights(tmp_path, one_thread):
    from safetensors.torch import load_file

    full = _train(tmp_path, "full")
    losses = _losses(full.run_dir)
    assert len(losses) == 16 and np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    record = json.loads((full.run_dir / "box_unet.json").read_text())
    assert record["boxes"]["min_area_mm2"] == 40.0 and record["training"]["data_seed_range"] == [0, 2]
    assert record["training"]["held_out"]["data"] == "phantom:tiny?n=1&seed=100"
    assert full.generator.min_area_mm2 == 40.0 and full.generator.spec.input_size == 32

    _train(tmp_path, "split", max_steps=8, final_test=False)       # stops after step 8, as if killed there
    resumed = _train(tmp_path, "split", resume="latest", final_test=False)
    assert resumed.info["steps"] == 16 and _losses(resumed.run_dir) == losses
    a = load_file(str(full.run_dir / "checkpoints" / "step_000016" / "model.safetensors"))
    b = load_file(str(resumed.run_dir / "checkpoints" / "step_000016" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # init: a new run starts from the exported U-Net (lr ~ 0 keeps its weights) and records where they came from
    tuned = _train(tmp_path, "tuned", init=str(full.run_dir), max_steps=1, lr=1e-12, eval_every=0, final_test=False)
    before, after = full.generator.net.state_dict(), tuned.generator.net.state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-8) for k in before)
    init = json.loads((tuned.run_dir / "box_unet.json").read_text())["training"]["init"]
    digest = hashlib.sha256((full.run_dir / "box_unet.safetensors").read_bytes()).hexdigest()
    assert init["sha256"] == digest and init["training"]["data_seed_range"] == [0, 2]
    _train(tmp_path, "tuned2", init=str(full.run_dir), max_steps=2, checkpoint_every=1, eval_every=0, final_test=False)
    shutil.rmtree(tmp_path / "tuned2" / "checkpoints" / "step_000002")        # as if killed after step 1
    resumed = _train(tmp_path, "tuned2", init=str(full.run_dir), max_steps=2, checkpoint_every=1, eval_every=0,
                     final_test=False, resume="latest")
    assert json.loads((resumed.run_dir / "box_unet.json").read_text())["training"]["init"]["sha256"] == digest
    with pytest.raises(ConfigError, match=r"^init: .*nowhere.*not found"):
        _train(tmp_path, "other", init=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"init .*: that U-Net is .*this config's network is"):
        _train(tmp_path, "other", init=str(full.run_dir), network={"input_size": 32, "channels": [4, 8, 16],
                                                                   "strides": [2, 2]})
    assert not (tmp_path / "other").exists()


def test_command_line_mistakes_are_one_line(tmp_path, capsys):
    from samliver.training.box_unet_config import main

    for args, message in ((["--set", "boxes.margn_mm=3"], "unknown boxes key 'margn_mm'"),
                          (["--input-size", "100"], "network: input_size 100 must be a multiple of 16"),
                          (["--set", "cache.size=64"], "cache.size: set by the network"),
                          (["--set", "boxes.low_threshold=0.7"],
                           "boxes.low_threshold: must not exceed threshold 0.4, got 0.7"),
                          (["--max-stesp", "3"], "did you mean --max-steps?")):
        assert main([*args, "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("train_box_unet.py: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
