"""Fully automatic segmentation: box generators → the model → liver/tumour labels, 3D cleanup,
``samliver segment --auto``, and the ``auto`` evaluation setting."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

import samliver
from samliver.adapters import apply_strategy
from samliver.adapters.task_head import NoTaskHeadError
from samliver.auto import MissingSpacingError, NoAutomaticPromptsError
from samliver.cleanup import cleanup_labels, constrain_tumours
from samliver.cli.main import main
from samliver.data import load_dataset, make_phantom
from samliver.errors import PromptError, SamliverError
from samliver.evaluation import evaluate
from samliver.evaluation.generator_settings import AutoSetting
from samliver.models.sam import SamSegmenter
from samliver.prompts import Prompts, boxes_from_mask, generators
from samliver.prompts.generators import BoxGeneratorError
from tests.conftest import TOTALSEG, needs_shared_data, randomize_

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
BUNDLED = (WEIGHTS / "samliver_tiny.safetensors", WEIGHTS / "box_unet_phantom.safetensors")
needs_bundled = pytest.mark.skipif(
    not all(p.is_file() for p in BUNDLED),
    reason="needs the bundled weights weights/samliver_tiny.safetensors and weights/box_unet_phantom.safetensors "
           "(scripts/pretrain_tiny.sh and scripts/train_box_unet.sh make them)")
CONN = np.ones((3, 3, 3), bool)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=4)


@pytest.fixture(scope="module")
def case():
    return make_phantom(3, preset="tiny")  # 16 x 64 x 64, one tumour on slices 7..11


class Oracle:
    """A box generator that reads boxes off a reference label map (liver boxes around labels 1+2);
    only ``slices`` (default all) are prompted, and it records its calls."""

    def __init__(self, label: np.ndarray, slices=None, extra: dict | None = None) -> None:
        self.label, self.slices, self.extra, self.calls = label, slices, extra or {}, []

    def __call__(self, hu, spacing):
        self.calls.append((hu.shape, spacing))
        out = {}
        for z in (range(len(self.label)) if self.slices is None else self.slices):
            liver, tumour = boxes_from_mask(self.label[z] >= 1), boxes_from_mask(self.label[z] == 2)
            if liver is None:
                continue
            parts = [liver] + ([tumour] if tumour is not None else [])
            out[z] = Prompts(boxes=np.concatenate([p.boxes for p in parts]),
                             labels=np.concatenate([np.full(len(p), cls, np.uint8) for p, cls in zip(parts, (1, 2))]))
        out.update(self.extra)
        return out


def _split(prompts: dict) -> tuple[dict, dict]:
    """Per-slice prompts → (liver objects, tumour objects), each for `segment_volume`."""
    liver, tumour = {}, {}
    for z, p in prompts.items():
        for target, cls in ((liver, 1), (tumour, 2)):
            keep = np.flatnonzero(p.labels == cls)
            if keep.size:
                target[z] = p.select(keep)
    return liver, tumour


def _expected_constraint(liver: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Independent check of `constrain_tumours`: a tumour component survives when its distance to
    the liver is at most one voxel diagonal."""
    out = liver.astype(np.uint8)
    components, n = ndimage.label(tumour, structure=CONN)
    to_liver = ndimage.distance_transform_edt(~liver) if liver.any() else np.full(liver.shape, np.inf)
    for k in range(1, n + 1):
        if to_liver[components == k].min() <= np.sqrt(3) + 1e-9:
            out[components == k] = 2
    return out


# ------------------------------------------------------------------------------ cleanup


def test_constrain_tumours_keeps_only_tumours_touching_the_liver():
    liver = np.zeros((6, 20, 20), bool)
    liver[1:5, 2:10, 2:10] = True
    tumour = np.zeros_like(liver)
    tumour[2:4, 5:8, 5:8] = True        # inside the liver
    tumour[4, 10, 10] = True            # touches the liver's corner voxel (4, 9, 9) diagonally
    tumour[1:3, 14:18, 14:18] = True    # far away
    tumour[5, 12:14, 2:4] = True        # one voxel gap to the liver: not touching
    tumour[2, 8:14, 4:6] = True         # at the liver's edge, bulging 4 voxels beyond it: kept whole
    out = constrain_tumours(liver, tumour)
    np.testing.assert_array_equal(out, _expected_constraint(liver, tumour))
    assert (out[2, 8:14, 4:6] == 2).all()
    assert out[2, 6, 6] == 2 and out[4, 10, 10] == 2 and out[1, 15, 15] == 0 and out[5, 12, 2] == 0
    assert set(np.unique(out)) == {0, 1, 2} and (out[liver & ~tumour] == 1).all()
    assert not constrain_tumours(np.zeros_like(liver), tumour).any()


def test_cleanup_labels_keeps_the_largest_liver_fills_holes_and_drops_stray_tumour():
    labels = np.zeros((8, 24, 24), np.uint8)
    labels[1:7, 2:14, 2:14] = 1          # the liver
    labels[3, 6:9, 6:9] = 0              # a hole in one slice (a vessel)
    labels[5, 3:8, 3:8] = 2              # a tumour ring with a hole in its middle
    labels[5, 5, 5] = 1
    labels[2, 16:22, 16:22] = 1          # a smaller second liver component, with a tumour
    labels[2, 18, 18] = 2
    labels[6, 20:23, 20:23] = 2          # a tumour with no liver at all
    out = cleanup_labels(labels)
    expected = np.zeros_like(labels)
    expected[1:7, 2:14, 2:14] = 1
    expected[5, 3:8, 3:8] = 2            # the ring's middle becomes tumour
    np.testing.assert_array_equal(out, expected)
    raw = cleanup_labels(labels, keep_largest=False, fill_holes=False)
    assert raw[3, 7, 7] == 0 and raw[2, 18, 18] == 2 and raw[5, 5, 5] == 1 and raw[6, 21, 21] == 0


# ------------------------------------------------------------------------------ the pipeline


def test_pipeline_refines_each_box_and_constrains_tumours(model, case):
    oracle = Oracle(case.label)
    predictor = samliver.Predictor(model)
    raw = predictor.segment_auto(case.image, oracle, cleanup=False)
    assert oracle.calls == [(case.label.shape, tuple(case.image.spacing))]
    liver_prompts, tumour_prompts = _split(oracle(case.image.array, case.image.spacing))
    assert liver_prompts and tumour_prompts
    liver = predictor.segment_volume(case.image, liver_prompts) == 1
    tumour = predictor.segment_volume(case.image, tumour_prompts) == 2
    np.testing.assert_array_equal(raw, _expected_constraint(liver, tumour))
    assert set(np.unique(raw)) == {0, 1, 2}
    cleaned = predictor.segment_auto(case.image, oracle)
    np.testing.assert_array_equal(cleaned, cleanup_labels(raw))
    # an HU array with its spacing gives the same
    np.testing.assert_array_equal(predictor.segment_auto(case.image.array, oracle, spacing=case.image.spacing),
                                  cleaned)


def test_tumour_box_away_from_the_liver_leaves_no_tumour(model, case):
    far = {1: Prompts(boxes=[[40, 40, 60, 60]], labels=[2])}
    oracle = Oracle(case.label, slices=range(5, 11), extra=far)
    predictor = samliver.Predictor(model)
    assert (predictor.segment_volume(case.image, far)[1] == 2).sum() > 100   # the model does segment it
    for cleanup in (False, True):
        out = predictor.segment_auto(case.image, oracle, cleanup=cleanup)
        assert not out[1].any() and (out == 2).any()
        components, n = ndimage.label(out == 2, structure=CONN)
        near_liver = ndimage.binary_dilation(out == 1, CONN)
        assert all(near_liver[components == k].any() for k in range(1, n + 1))


class EncodeCounter:
    def __init__(self, monkeypatch) -> None:
        self.images: list[str] = []
        original = SamSegmenter.encode

        def encode(model, pixels):
            self.images += [hashlib.sha1(p.cpu().numpy().tobytes()).hexdigest() for p in pixels]
            return original(model, pixels)
        monkeypatch.setattr(SamSegmenter, "encode", encode)


def test_slices_without_prompts_stay_empty_and_are_not_encoded(model, case, monkeypatch):
    empty = {8: Prompts(boxes=np.zeros((0, 4), np.float32))}     # an empty prompt set for slice 8
    prompted = [4, 5, 6, 7, 9, 10]
    oracle = Oracle(case.label, slices=prompted, extra=empty)
    counter = EncodeCounter(monkeypatch)
    predictor = samliver.Predictor(model)
    raw = predictor.segment_auto(case.image, oracle, cleanup=False)
    assert len(counter.images) == len(set(counter.images)) == len(prompted)
    assert not np.delete(raw, prompted, axis=0).any() and all(raw[z].any() for z in prompted)
    cleaned = predictor.segment_auto(case.image, oracle)
    assert len(counter.images) == len(prompted)                  # the second call decodes from the cache
    # the empty slice 8 splits the liver in two; the cleanup keeps the larger part, slices 4..7
    assert not np.delete(cleaned, [4, 5, 6, 7], axis=0).any() and all(cleaned[z].any() for z in (4, 5, 6, 7))
    np.testing.assert_array_equal(cleaned, cleanup_labels(raw))


def test_a_prompt_free_head_is_used_when_no_generator_is_given(case):
    torch.manual_seed(1)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, "decoder", {"head": "multiclass", "head_channels": 32})
    randomize_(model.task_head, seed=3, std=0.3)
    predictor = samliver.Predictor(model)
    head = predictor.segment_head(case.image)
    assert set(np.unique(head)) == {0, 1, 2}
    np.testing.assert_array_equal(predictor.segment_auto(case.image, cleanup=False), head)
    np.testing.assert_array_equal(predictor.segment_auto(case.image), cleanup_labels(head))
    # a generator given explicitly wins over the head
    oracle = Oracle(case.label, slices=[6])
    out = predictor.segment_auto(case.image, oracle, cleanup=False)
    assert oracle.calls and not np.delete(out, 6, axis=0).any()


def test_the_models_default_generator_is_used(model, case, monkeypatch):
    assert generators.has_default_generator("samliver_tiny")      # built in: the bundled U-Net
    oracle = Oracle(case.label)
    monkeypatch.setitem(generators._DEFAULTS, "samliver_tiny", (lambda: oracle, "a test oracle"))
    predictor = samliver.Predictor(model)
    np.testing.assert_array_equal(predictor.segment_auto(case.image), predictor.segment_auto(case.image, oracle))
    assert len(oracle.calls) == 2

    class OnDevice(Oracle):             # the default generator is moved to the model's device; a given one is not
        def to(self, device):
            self.moved_to.append(device)
            return self

    placed = OnDevice(case.label)
    placed.moved_to = []
    monkeypatch.setitem(generators._DEFAULTS, "samliver_tiny", (lambda: placed, "a test oracle"))
    predictor.segment_auto(case.image)
    predictor.segment_auto(case.image, placed)
    assert placed.moved_to == [model.device] and len(placed.calls) == 2


def test_missing_bundled_unet_is_a_one_line_error(model, case, tmp_path, monkeypatch):
    from samliver import weights_store

    monkeypatch.setattr(weights_store, "search_dirs", lambda: [tmp_path])   # a fresh install without it
    with pytest.raises(SamliverError, match="box_unet_phantom") as err:
        samliver.Predictor(model).segment_auto(case.image)
    assert "\n" not in str(err.value)


def _bad(what):
    return lambda hu, spacing: what


@pytest.mark.parametrize("generator, error, message", [
    (_bad([1, 2]), BoxGeneratorError, r"box generator: returned list, expected \{slice: Prompts\}"),
    (_bad({16: Prompts(boxes=[[1, 1, 5, 5]])}), BoxGeneratorError, "slice 16 outside the volume's 16 slices"),
    (_bad({2: [[1, 1, 5, 5]]}), BoxGeneratorError, "slice 2 holds list, expected Prompts"),
    (_bad({2: Prompts(boxes=[[1, 1, 5, 5]], labels=[3])}), BoxGeneratorError, "slice 2 has label 3"),
    (_bad({2: Prompts(boxes=[[70, 1, 80, 5]])}), SamliverError, "lies outside the 64x64"),
])
def test_bad_generator_output_is_a_one_line_error(model, case, generator, error, message):
    with pytest.raises(error, match=message) as err:
        samliver.Predictor(model).segment_auto(case.image, generator)
    assert isinstance(err.value, SamliverError) and "\n" not in str(err.value)


def test_what_is_missing_is_said(model, case, monkeypatch):
    predictor = samliver.Predictor(model)
    with pytest.raises(MissingSpacingError, match=r"pass spacing=\(z, y, x\)"):
        predictor.segment_auto(case.image.array, Oracle(case.label))
    for spacing in (2.0, (1, "x", 1), (1.0, 0.0, 1.0)):
        with pytest.raises(PromptError, match=r"spacing: expected .*\(z, y, x\).* in mm, got"):
            predictor.segment_auto(case.image.array, Oracle(case.label), spacing=spacing)
    with pytest.raises(TypeError, match="pass window= by keyword"):
        predictor.segment_auto(case.image, (-100, 200))
    monkeypatch.setattr(generators, "_DEFAULTS", {})
    with pytest.raises(NoAutomaticPromptsError, match="samliver_tiny has no prompt-free head and no default box "
                                                      "generator: pass box_generator=") as err:
        predictor.segment_auto(case.image)
    assert isinstance(err.value, NoTaskHeadError) and "\n" not in str(err.value)

    def not_installed():
        raise ImportError("No module named 'samliver.prompts.some_unet'")
    generators.register_default_generator("samliver_tiny", not_installed, "a U-Net")
    with pytest.raises(BoxGeneratorError, match=r"samliver_tiny: its default box generator \(a U-Net\) is "
                                                r"unavailable: No module named"):
        predictor.segment_auto(case.image)


# ------------------------------------------------------------------------------ evaluation setting


def test_auto_setting_runs_the_pipeline_once_per_case(model, monkeypatch):
    spec = "phantom:tiny?n=1&seed=3"
    cases = load_dataset(spec)
    oracles = {c.name: Oracle(c.label) for c in cases}

    def by_case(hu, spacing):  # the generator sees only the image: find its case by its voxels
        name = next(c.name for c in cases if np.array_equal(c.image.array, hu))
        return oracles[name](hu, spacing)
    result = evaluate(model, spec, [AutoSetting(box_generator=by_case),
                                    AutoSetting(cleanup=False, box_generator=by_case)], None, figures=False)
    assert [len(o.calls) for o in oracles.values()] == [2]    # once per case and setting, for both targets
    predictor = samliver.Predictor(model)
    for c in cases:
        expected = predictor.segment_auto(c.image, oracles[c.name])
        ref = c.label >= 1
        dice = 2 * ((expected >= 1) & ref).sum() / ((expected >= 1).sum() + ref.sum())
        row = next(r for r in result.rows if r["case"] == c.name and r["setting"] == "auto" and r["target"] == "liver")
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-6)
    assert {r["setting"] for r in result.rows} == {"auto", "auto-no-cleanup"}


def test_auto_setting_refuses_a_model_without_automatic_prompts(model, monkeypatch):
    from samliver.evaluation import SettingError, get_setting

    monkeypatch.setattr(generators, "_DEFAULTS", {})
    with pytest.raises(SettingError, match="auto: samliver_tiny has no prompt-free head"):
        evaluate(model, "phantom:tiny?n=1&seed=3", "auto", None)
    assert get_setting("auto-no-cleanup").params()["cleanup"] is False


# ------------------------------------------------------------------------------ command line


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(model.sam.state_dict(), path)
    return path


def _one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_auto_writes_labels_on_the_ct_grid(tmp_path, tiny_checkpoint, model, monkeypatch, capsys):
    assert main(["synth", "phantom", "--n", "1", "--preset", "tiny", "--seed", "3", "-o", str(tmp_path / "ds")]) == 0
    image = next((tmp_path / "ds" / "images").iterdir())
    ct = samliver.load_ct(image)
    label = samliver.load_label(next((tmp_path / "ds" / "labels").iterdir()), like=ct)
    oracle = Oracle(label)
    monkeypatch.setitem(generators._DEFAULTS, "samliver_tiny", (lambda: oracle, "a test oracle"))
    raw = samliver.Predictor(model).segment_auto(ct, oracle, cleanup=False)
    for extra, name, expected in (([], "auto.nii.gz", cleanup_labels(raw)), (["--no-cleanup"], "raw.nii.gz", raw)):
        rc = main(["segment", str(image), "--model", "samliver_tiny", "--checkpoint", str(tiny_checkpoint),
                   "--auto", *extra, "-o", str(tmp_path / name)])
        out = capsys.readouterr().out
        assert rc == 0 and "label 2" in out and "default adapter fits its bundled weights, not --checkpoint" in out
        src, written = nib.load(image), nib.load(tmp_path / name)
        np.testing.assert_array_equal(written.affine, src.affine)
        assert written.shape == src.shape
        np.testing.assert_array_equal(samliver.load_label(tmp_path / name, like=ct), expected)


@pytest.mark.parametrize("extra, fragment", [
    (["--box", "3,1,1,9,9", "--no-cleanup"], "--box-generator and --no-cleanup apply to --auto"),
    (["--auto", "--propagate"], "--label and --propagate apply to given prompts, not to --auto"),
    (["--auto", "--box-generator", "nowhere.safetensors"], "nowhere"),
])
def test_cli_auto_misuse_is_a_one_line_error(tmp_path, tiny_checkpoint, capsys, extra, fragment):
    assert main(["synth", "phantom", "--n", "1", "--preset", "tiny", "-o", str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    image = next((tmp_path / "ds" / "images").iterdir())
    out = tmp_path / "out.nii.gz"
    rc = main(["segment", str(image), "--model", "samliver_tiny", "--checkpoint", str(tiny_checkpoint), *extra,
               "-o", str(out)])
    _one_line_error(capsys, rc, fragment)
    assert not out.exists()


@needs_shared_data
def test_real_ct_auto_gives_liver_and_tumour_on_its_grid(tmp_path, tiny_checkpoint, model, monkeypatch, capsys):
    """The real CT with tumours inserted in its (TotalSegmentator) liver; boxes from that label."""
    rc = main(["synth", "tumors", str(TOTALSEG / "example_ct_sm.nii.gz"),
               str(TOTALSEG / "example_seg_fast" / "liver.nii.gz"), "--count", "2,3", "--seed", "1",
               "-o", str(tmp_path / "synth")])
    assert rc == 0
    image = tmp_path / "synth" / "image.nii.gz"
    ct = samliver.load_ct(image)
    label = samliver.load_label(tmp_path / "synth" / "label.nii.gz", like=ct)
    oracle = Oracle(label)
    monkeypatch.setitem(generators._DEFAULTS, "samliver_tiny", (lambda: oracle, "a test oracle"))
    out = tmp_path / "auto.nii.gz"
    assert main(["segment", str(image), "--model", "samliver_tiny", "--checkpoint", str(tiny_checkpoint),
                 "--auto", "-o", str(out)]) == 0
    src, written = nib.load(image), nib.load(out)
    np.testing.assert_array_equal(written.affine, src.affine)
    assert written.shape == src.shape
    reread = samliver.load_label(out, like=ct)
    assert set(np.unique(reread)) == {0, 1, 2}
    assert len(oracle.calls) == 1 and oracle.calls[0][0] == ct.array.shape
    # tumours lie in the liver: every tumour component touches liver voxels
    components, n = ndimage.label(reread == 2, structure=CONN)
    near_liver = ndimage.binary_dilation(reread == 1, CONN)
    assert n and all(near_liver[components == k].any() for k in range(1, n + 1))


# ------------------------------------------------------------------------------ bundled weights


def _training_seeds() -> set[int]:
    """Phantom seeds named in the bundled U-Net's JSON (``phantom:liver-tumor?n=N&seed=S`` specs)."""
    text = (WEIGHTS / "box_unet_phantom.json").read_text()
    seeds: set[int] = set()
    for spec in re.findall(r"phantom:liver-tumor\?[^\"' ]*", text):
        n = int(re.search(r"n=(\d+)", spec).group(1)) if "n=" in spec else 8
        s = int(re.search(r"seed=(\d+)", spec).group(1)) if "seed=" in spec else 0
        seeds |= set(range(s, s + n))
    return seeds


@needs_bundled
def test_load_model_applies_the_default_adapter(tmp_path, monkeypatch):
    """``adapter="default"``: what ``segment --auto`` applies, for Python users."""
    from samliver.adapters import AdapterError
    from samliver.prompts import generators

    default = samliver.load_model("samliver_tiny", adapter="default").state_dict()
    named = samliver.load_model("samliver_tiny", adapter=WEIGHTS / "samliver_tiny_liver_tumor").state_dict()
    bare = samliver.load_model("samliver_tiny").state_dict()
    assert default.keys() == named.keys() and all(torch.equal(default[k], named[k]) for k in default)
    assert default.keys() != bare.keys()
    monkeypatch.setitem(generators._DEFAULT_ADAPTERS, "samliver_tiny", lambda: tmp_path / "gone")
    with pytest.raises(AdapterError, match=r"adapter 'default': .*gone, the default adapter of samliver_tiny, is not"):
        samliver.load_model("samliver_tiny", checkpoint="random", adapter="default")
    monkeypatch.delitem(generators._DEFAULT_ADAPTERS, "samliver_tiny")
    with pytest.raises(AdapterError, match="adapter 'default': model samliver_tiny has no default adapter"):
        samliver.load_model("samliver_tiny", checkpoint="random", adapter="default")


@needs_bundled
def test_bundled_pipeline_on_unseen_phantoms():
    """Acceptance: liver Dice >= 0.7 and at least half of the lesions >= 10 mm touched by a predicted
    tumour, on liver-tumour phantoms that neither bundled model trained on."""
    from samliver.evaluation.lesions import evaluate_lesions

    spec, first, n = "phantom:liver-tumor", 90_000, 4
    assert not _training_seeds() & set(range(first, first + n))
    model = samliver.load_model("samliver_tiny")
    predictor = samliver.Predictor(model)
    dices, big, touched = [], 0, 0
    for c in load_dataset(f"{spec}?n={n}&seed={first}"):
        pred = predictor.segment_auto(c.image)
        ref = c.label >= 1
        dices.append(2 * ((pred >= 1) & ref).sum() / ((pred >= 1).sum() + ref.sum()))
        for lesion in evaluate_lesions(pred == 2, c.label == 2, c.image.spacing).reference:
            if lesion.diameter_mm >= 10:
                big += 1
                touched += lesion.overlapped
    print(f"bundled auto pipeline: liver Dice {np.round(dices, 3).tolist()}, lesions >= 10 mm touched "
          f"{touched}/{big}")
    assert np.mean(dices) >= 0.7
    assert big > 0 and touched >= big / 2


@needs_bundled
@needs_shared_data
def test_bundled_cli_auto_on_the_real_ct(tmp_path, capsys):
    """``samliver segment CT --auto --model samliver_tiny`` with nothing but the installed package."""
    assert main(["synth", "tumors", str(TOTALSEG / "example_ct_sm.nii.gz"),
                 str(TOTALSEG / "example_seg_fast" / "liver.nii.gz"), "--count", "2,3", "--seed", "1",
                 "-o", str(tmp_path / "synth")]) == 0
    image, out = tmp_path / "synth" / "image.nii.gz", tmp_path / "auto.nii.gz"
    assert main(["segment", str(image), "--model", "samliver_tiny", "--auto", "-o", str(out)]) == 0
    src, written = nib.load(image), nib.load(out)
    np.testing.assert_array_equal(written.affine, src.affine)
    assert written.shape == src.shape
    values = set(np.unique(np.asarray(written.dataobj)).tolist())
    ct = samliver.load_ct(image)
    pred = samliver.load_label(out, like=ct)
    ref = samliver.load_label(tmp_path / "synth" / "label.nii.gz", like=ct)   # TotalSegmentator's liver + tumours
    dice = 2 * ((pred >= 1) & (ref >= 1)).sum() / ((pred >= 1).sum() + (ref >= 1).sum())
    said = capsys.readouterr().out
    print(f"bundled --auto on the real CT: labels {sorted(values)}, liver Dice {dice:.3f}; {json.dumps(said)}")
    assert "default adapter" in said and "samliver_tiny_liver_tumor" in said  # the shipped liver-tumour LoRA
    # a phantom-trained U-Net, far from its training domain on this 3 mm CT
    assert values == {0, 1, 2} and dice >= 0.8
