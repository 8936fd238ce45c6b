"""`Predictor` against segment_anything's `SamPredictor` on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

import samliver
from samliver.errors import PromptError
from samliver.models.base import window_to_rgb
from samliver.prompts import Prompts
from tests.conftest import ct_like_slice, randomize_

BOXES = np.array([[20, 30, 90, 110], [60, 10, 150, 70]], np.float32)


@pytest.fixture(scope="module")
def tiny():
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    randomize_(model, seed=1)
    return model


def _upstream(model, hu, window=None):
    ref = SamPredictor(model.sam)
    ref.set_image(window_to_rgb(hu, window or model.spec.window))
    return ref


def _check_against_upstream(model, hu, **kwargs):
    ours = samliver.Predictor(model)
    ours.set_image(hu)
    ref = _upstream(model, hu)
    multimask = kwargs.pop("multimask", False)
    got = ours.predict(multimask=multimask, **kwargs)
    ref_kwargs = {"box": kwargs.get("box"), "point_coords": kwargs.get("points"),
                  "point_labels": kwargs.get("point_labels"), "mask_input": kwargs.get("mask_input")}
    ref_kwargs = {k: (None if v is None else np.asarray(v)) for k, v in ref_kwargs.items()}
    masks, scores, low_res = ref.predict(multimask_output=multimask, return_logits=True, **ref_kwargs)
    best = int(np.argmax(scores))
    np.testing.assert_allclose(got.logits[0], masks[best], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(got.scores[0], scores[best], atol=1e-5)
    np.testing.assert_array_equal(got.masks[0], masks[best] > 0)
    assert 0.0 < got.masks.mean() < 1.0, "degenerate test: the mask should be neither empty nor full"
    return got, low_res[best]


@pytest.mark.parametrize("kwargs", [
    dict(box=BOXES[0]),
    dict(points=[[50.0, 60.0]], point_labels=[1]),
    dict(points=[[50.0, 60.0], [120.0, 30.0], [80.0, 100.0]], point_labels=[1, 0, 1]),
    dict(box=BOXES[1], points=[[100.0, 40.0]], point_labels=[0]),
    dict(box=BOXES[0], multimask=True),
    dict(points=[[50.0, 60.0]], point_labels=[1], multimask=True),
])
def test_predict_matches_sam_predictor(tiny, kwargs):
    _check_against_upstream(tiny, ct_like_slice(140, 180), **kwargs)


def test_mask_input_matches_sam_predictor(tiny):
    hu = ct_like_slice(140, 180)
    _, low_res = _check_against_upstream(tiny, hu, box=BOXES[0])
    _check_against_upstream(tiny, hu, box=BOXES[0], mask_input=low_res[None])


def test_many_boxes_decode_as_one_batch_and_match_single_calls(tiny):
    hu = ct_like_slice(140, 180)
    pred = samliver.Predictor(tiny)
    pred.set_image(hu)
    both = pred.predict(box=BOXES)
    assert both.masks.shape == (2, 140, 180) and both.masks.dtype == bool
    for i in range(2):
        one = pred.predict(box=BOXES[i])
        np.testing.assert_allclose(both.logits[i], one.logits[0], atol=1e-5)


def test_window_override_changes_the_pixels(tiny):
    hu = ct_like_slice(64, 64)
    default = tiny.preprocess(hu)
    bone = tiny.preprocess(hu, window=(-1000.0, 1000.0))
    ref = torch.from_numpy(window_to_rgb(hu, (-1000.0, 1000.0)))
    assert not torch.equal(default, bone)
    assert (ref[..., 0] == np.rint((np.clip(hu, -1000, 1000) + 1000) * 255 / 2000)).all()


def test_vit_b_full_size_matches_sam_predictor():
    model = samliver.load_model("sam_vit_b", checkpoint="random")
    randomize_(model, seed=2, std=0.02)
    _check_against_upstream(model, ct_like_slice(96, 128, seed=3), box=np.array([10, 20, 70, 80], np.float32))


def test_segment_volume_labels_overlap_and_unprompted_slices(tiny):
    vol = np.stack([ct_like_slice(96, 112, seed=s) for s in range(6)])
    prompts = {1: Prompts(boxes=[[10, 10, 80, 80]], labels=[1]),
               4: Prompts(boxes=[[10, 10, 80, 80], [20, 20, 60, 60]], labels=[1, 2])}
    pred = samliver.Predictor(tiny, batch_size=2)
    out = pred.segment_volume(vol, prompts)
    assert out.dtype == np.uint8 and out.shape == vol.shape
    assert not out[[0, 2, 3, 5]].any()
    # Each prompted slice equals a direct prediction; on overlap the tumour label (2) wins.
    for z, p in prompts.items():
        pred.set_image(vol[z])
        masks = pred.predict(box=p.boxes).masks
        expected = np.zeros(vol.shape[1:], np.uint8)
        for m, lab in sorted(zip(masks, p.labels), key=lambda t: t[1]):
            expected[m] = lab
        np.testing.assert_array_equal(out[z], expected)
    assert (out[4] == 2).any()


def test_segment_volume_encodes_only_prompted_slices_once(tiny, monkeypatch):
    vol = np.stack([ct_like_slice(64, 64, seed=s) for s in range(8)])
    calls = []
    original = tiny.encode
    monkeypatch.setattr(tiny, "encode", lambda pixels: calls.append(pixels.shape[0]) or original(pixels))
    pred = samliver.Predictor(tiny, batch_size=3)
    prompts = {z: Prompts(boxes=[[5, 5, 40, 40]]) for z in (0, 2, 3, 5, 7)}
    pred.segment_volume(vol, prompts)
    assert calls == [3, 2]
    pred.segment_volume(vol, prompts)  # cached: no encoder call
    assert calls == [3, 2]


def test_propagate_volume_box_propagation_follows_the_object(tiny):
    vol = np.stack([ct_like_slice(80, 96, seed=s) for s in range(7)])
    pred = samliver.Predictor(tiny)
    out = pred.propagate_volume(vol, 3, Prompts(boxes=[[10, 15, 60, 70]], labels=[2]))
    assert set(np.unique(out)) <= {0, 2}
    pred.set_image(vol[3])
    np.testing.assert_array_equal(out[3] == 2, pred.predict(box=[10, 15, 60, 70]).masks[0])
    # Slice 4 was prompted with the box of slice 3's mask (grown by 2 px).
    rows, cols = np.nonzero(out[3])
    box = [max(cols.min() - 2, 0), max(rows.min() - 2, 0), min(cols.max() + 3, 96), min(rows.max() + 3, 80)]
    pred.set_image(vol[4])
    np.testing.assert_array_equal(out[4] == 2, pred.predict(box=box).masks[0])


@pytest.mark.parametrize("box, message", [
    ([200, 10, 260, 50], r"boxes\[0\].*outside the 180x140"),
    ([50, 10, 40, 50], r"boxes\[0\]: need x0 < x1"),
    ([np.nan, 10, 40, 50], r"boxes: contains NaN"),
])
def test_bad_boxes_raise_prompt_error(tiny, box, message):
    pred = samliver.Predictor(tiny)
    pred.set_image(ct_like_slice(140, 180))
    with pytest.raises(PromptError, match=message):
        pred.predict(box=box)


def test_prompt_on_missing_slice_and_text_without_projection(tiny):
    pred = samliver.Predictor(tiny)
    vol = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(PromptError, match="slice 5 outside the volume's 3 slices"):
        pred.segment_volume(vol, {5: Prompts(boxes=[[1, 1, 10, 10]])})
    pred.set_image(vol[0])
    with pytest.raises(PromptError, match="model has no trained text projection; train one with train_adapter.py"):
        pred.predict(text="liver tumor")
