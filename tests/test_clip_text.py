"""CLIP text prompts (`samliver.prompts.clip_text`): the frozen, cached open_clip text tower, the trained
projection to decoder tokens, training with ``text_prompts``, saving with the adapter, ``Predictor.predict(text=)``,
``samliver segment --text`` and the ``text`` evaluation setting. Offline: the bundled tiny tower config
with seeded random weights, samliver_tiny with random weights, tiny phantoms."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

import samliver
from samliver.errors import PromptError
from samliver.prompts import Prompts
from samliver.prompts.clip_text import (TINY_TOWER, TextPrompter, TextTowerError, TextTowerSpec,
                                        TextTruncationWarning, attach_text_prompts, text_tokens, text_tower)
from samliver.prompts.clip_tower import check_tower_source

TOWER = TextTowerSpec(TINY_TOWER, "random", seed=0)
DESCRIPTIONS = {"liver": ["liver", "the liver"], "tumor": ["liver tumor", "hepatic lesion"]}


pytestmark = pytest.mark.usefixtures("one_thread")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


# ------------------------------------------------------------------ tower and projection


def test_tower_is_frozen_cached_and_seeded():
    tower = text_tower(TOWER)
    assert all(not p.requires_grad for p in tower.model.parameters()) and tower.model.visual is None
    calls = []
    encode_text = tower.model.encode_text

    def counting(tokens, normalize=False):
        calls.append(tokens.shape[0])
        return encode_text(tokens, normalize=normalize)

    tower.model.encode_text = counting
    try:
        first = tower.encode(["cached text a", "cached text b", "cached text a"])
        again = tower.encode(["cached text b", "cached text a"])
    finally:
        del tower.model.encode_text
    assert calls == [2]                                      # two distinct texts, encoded once, in one batch
    torch.testing.assert_close(again, first[[1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(3))   # L2-normalised embeddings
    # The same seed rebuilds the same random tower (what a saved projection relies on); another seed differs.
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(0)
        same = open_clip.create_model(TINY_TOWER, load_weights=False, pretrained_text=False)
    with torch.no_grad():
        reference = same.encode_text(tower.tokenizer(["liver"]), normalize=True)
    torch.testing.assert_close(tower.encode(["liver"]), reference, rtol=0, atol=1e-6)
    assert not torch.allclose(text_tower(TextTowerSpec(TINY_TOWER, "random", seed=1)).encode(["liver"]), reference)


def test_local_weights_file_and_json_config(tmp_path):
    """A user's own weights (a local file) and a model-config .json file build the same tower offline."""
    from safetensors.torch import save_file

    from samliver.configs import ROOT

    tower = text_tower(TOWER)
    state = {k: v.contiguous() for k, v in tower.model.state_dict().items()}
    # open_clip loads a whole CLIP checkpoint strictly: add the (unused) vision tower's tensors
    import open_clip

    full = open_clip.create_model(TINY_TOWER, load_weights=False, pretrained_text=False).state_dict()
    full.update(state)
    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "tower.safetensors"))
    (tmp_path / "my-text.json").write_text((ROOT / "clip" / f"{TINY_TOWER}.json").read_text())
    from_file = text_tower(TextTowerSpec(str(tmp_path / "my-text.json"), str(tmp_path / "tower.safetensors")))
    torch.testing.assert_close(from_file.encode(["hepatic lesion"]), tower.encode(["hepatic lesion"]),
                               rtol=0, atol=1e-6)
    # an open_clip local-dir: folder (open_clip_config.json + weights) builds it too; without weights it is
    # refused (open_clip itself would only log a warning and build random weights)
    folder = tmp_path / "my-clip"
    folder.mkdir()
    config = {"model_cfg": json.loads((ROOT / "clip" / f"{TINY_TOWER}.json").read_text())}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    spec = TextTowerSpec(f"local-dir:{folder}")
    with pytest.raises(TextTowerError, match=r"my-clip has open_clip_config.json but no weights file \(\*.safetensors"):
        check_tower_source(spec)
    with pytest.raises(TextTowerError, match="but no weights file"):
        text_tower(spec)
    (tmp_path / "tower.safetensors").rename(folder / "open_clip_model.safetensors")
    check_tower_source(spec)
    torch.testing.assert_close(text_tower(spec).encode(["hepatic lesion"]), tower.encode(["hepatic lesion"]),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("spec, needle", [
    (TextTowerSpec("hf-hub:nobody/no-such-biomed-clip"), "cannot build it offline"),
    (TextTowerSpec("ViT-B-32"), "is an architecture; give checkpoint"),
    (TextTowerSpec("ViT-B-32", "no-such-tag"), "neither a file nor a pretrained tag"),
    (TextTowerSpec("no-such-clip", "random"), "unknown open_clip model 'no-such-clip'"),
    (TextTowerSpec("/nowhere/tower.json", "random"), "/nowhere/tower.json: no such file"),
])
def test_unusable_towers_are_one_line_errors(spec, needle):
    with pytest.raises(TextTowerError, match=needle) as info:
        text_tower(spec)
    assert "\n" not in str(info.value)


def test_misspelt_model_names_fail_the_quick_check_before_any_data():
    from samliver.training import resolve
    from samliver.training.config import ConfigError

    with pytest.raises(TextTowerError, match=re.escape("unknown open_clip model 'ViT-B-3' (did you mean 'ViT-B-32'")) \
            as info:
        check_tower_source(TextTowerSpec("ViT-B-3", "random"))
    assert "\n" not in str(info.value)
    with pytest.raises(TextTowerError, match=r"unknown open_clip model 'no-such-clip' \(see open_clip.list_models"):
        check_tower_source(TextTowerSpec("no-such-clip", "random"))
    for known in ("ViT-B-32", TINY_TOWER):                       # known names pass (nothing is built or read)
        check_tower_source(TextTowerSpec(known, "random"))
    # training refuses it while resolving the config, before any data is prepared
    with pytest.raises(ConfigError, match=re.escape("text_prompts: text tower 'ViT-B-3' (checkpoint random): unknown")):
        resolve(None, {"text_prompts": {"enabled": True, "model": "ViT-B-3", "checkpoint": "random"}})


def test_long_text_warns_naming_the_truncation():
    tower = text_tower(TOWER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tower.encode(["segment the hepatic lesion"])                # short: no warning
    long_text = "the " + "very large hypodense " * 12 + "lesion in the right liver lobe"
    count = tower.token_count(long_text)
    assert count > tower.context_length == 32
    with pytest.warns(TextTruncationWarning) as record:
        tower.encode([long_text])
    message = str(record[0].message)
    assert long_text[:40] in message and f"is {count} tokens long" in message
    assert "context of 32 tokens; it was truncated to 32 tokens" in message


def test_different_texts_give_different_sparse_tokens():
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    prompter = attach_text_prompts(model, TOWER, DESCRIPTIONS, num_tokens=3)
    tokens, labels = text_tokens(model, ["liver", "liver tumor", "hepatic lesion", "liver", "a liver cyst"])
    assert tokens.shape == (5, 3, 96) and tokens.dtype == np.float32      # (N, T, decoder width C)
    assert labels.tolist() == [1, 2, 2, 1, 1]                               # class of each description; else 1
    np.testing.assert_array_equal(tokens[0], tokens[3])
    distinct = [tokens[i] for i in (0, 1, 2, 4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(distinct[i] - distinct[j]).max() > 1e-2
    # The tokens are the projection of the tower's embeddings, and they steer the decoder.
    with torch.no_grad():
        expected = prompter.projection(text_tower(TOWER).encode(["a liver cyst"]))
        emb = model.encode(model.preprocess(np.zeros((64, 64), np.float32)))
        outs = model.decode(emb, Prompts(tokens=tokens[:2]), (64, 64)).low_res_logits
    np.testing.assert_allclose(tokens[4], expected[0].numpy(), atol=1e-6)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_tokens_train_through_the_decoder_and_the_tower_stays_frozen():
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    prompter = attach_text_prompts(model, TOWER, DESCRIPTIONS)
    tower_before = {k: v.clone() for k, v in text_tower(TOWER).model.state_dict().items()}
    emb = model.encode(model.preprocess(np.zeros((64, 64), np.float32)))
    out = model.decode(emb, Prompts(tokens=prompter(["liver", "liver tumor"])), (64, 64))
    out.low_res_logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompter.projection.parameters())
    assert not any(k.startswith("text_prompts.") and "tower" in k for k in model.state_dict())
    assert set(prompter.state_dict()) == {"known_embeddings", *(f"projection.{k}" for k in
                                                                 prompter.projection.state_dict())}
    for k, v in text_tower(TOWER).model.state_dict().items():
        torch.testing.assert_close(v, tower_before[k], rtol=0, atol=0)


def test_no_trained_projection_is_a_clear_error(tmp_path, capsys):
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    predictor = samliver.Predictor(model)
    predictor.set_image(np.zeros((64, 64), np.float32))
    with pytest.raises(PromptError, match=r"samliver_tiny: model has no trained text projection; train one with "
                                          r"train_adapter.py --method METHOD --text-prompts"):
        predictor.predict(text="liver tumor")
    from samliver.evaluation import SettingError, get_setting

    with pytest.raises(SettingError, match="prompt setting 'text': .*no trained text projection"):
        get_setting("text").check(model)
    from samliver.cli.main import main
    from samliver.io.save import save_image

    ct = samliver.data.make_phantom(3, preset="tiny").image
    save_image(ct, tmp_path / "ct.nii.gz")
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", "samliver_tiny", "--checkpoint", "random",
               "--text", "liver tumor", "-o", str(tmp_path / "mask.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no trained text projection" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "mask.nii.gz").exists()


# ------------------------------------------------------------------ training, saving, using


def test_text_queries_ask_each_class_and_teach_absence():
    from samliver.data.slices import objects_from_label
    from samliver.prompts.clip_text import text_classes
    from samliver.training.prompting import text_queries

    case = samliver.data.make_phantom(0, preset="tiny")
    label = np.asarray(case.label)
    z_tumour = int(np.flatnonzero((label == 2).any(axis=(1, 2)))[0])
    z_liver = int(np.flatnonzero((label == 1).any(axis=(1, 2)) & ~(label == 2).any(axis=(1, 2)))[0])
    classes = text_classes(DESCRIPTIONS)
    masks, labels = objects_from_label(label[z_tumour])
    targets, texts, out = text_queries(masks, labels, classes, np.random.default_rng(0))
    assert out.tolist() == [1, 2] and texts[0] in DESCRIPTIONS["liver"] and texts[1] in DESCRIPTIONS["tumor"]
    np.testing.assert_array_equal(targets[0], label[z_tumour] >= 1)      # the liver, tumours included
    np.testing.assert_array_equal(targets[1], label[z_tumour] == 2)      # every tumour component at once
    masks, labels = objects_from_label(label[z_liver])
    targets, texts, out = text_queries(masks, labels, classes, np.random.default_rng(0))
    assert out.tolist() == [1, 2] and not targets[1].any()              # tumour-free liver slice: empty target
    masks, labels = objects_from_label(label[z_tumour], liver=False)
    assert text_queries(masks, labels, classes, np.random.default_rng(0))[2].tolist() == [2]


def test_config_and_flag():
    from samliver.training import resolve
    from samliver.training.cli import build_parser, overrides_from
    from samliver.training.config import ConfigError, TextPromptSettings

    args = build_parser().parse_args(["--method", "decoder", "--text-prompts", "--set", "text_prompts.prob=0.3",
                                      "--set", f"text_prompts.model={TINY_TOWER}", "--set",
                                      "text_prompts.checkpoint=random"])
    config, _ = resolve(None, overrides_from(args))
    assert config.text_prompts.enabled and config.text_prompts.prob == 0.3
    assert config.text_prompts.descriptions["tumor"][0] == "liver tumor"
    assert not resolve(None, {"method": "decoder"})[0].text_prompts.enabled
    tiny = {"enabled": True, "model": TINY_TOWER, "checkpoint": "random"}
    for bad, needle in [({"prob": 2}, "0 <= prob <= 1"), ({"descriptions": {"spleen": ["spleen"]}}, "unknown class"),
                        ({"descriptions": {"liver": ["liver"]}}, "no descriptions for target(s) tumor"),
                        ({"checkpoint": "/nowhere/tower.safetensors"}, "weights file /nowhere/tower.safetensors not found"),
                        # the default tower (BiomedCLIP) is not in this machine's Hugging Face cache: refused up front
                        ({"model": TextPromptSettings().model, "checkpoint": None},
                         "not in the local Hugging Face cache (samliver never downloads it)")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            resolve(None, {"text_prompts": {**tiny, **bad}})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A short text-only training run: decoder strategy (frozen random encoder), tiny phantoms, every drawn
    slice holding tumour (small tumours need the most steps)."""
    from accelerate.state import AcceleratorState, GradientState

    from samliver.training import resolve
    from samliver.training.loop import train

    out = tmp_path_factory.mktemp("text_run")
    config, _ = resolve(None, dict(
        method="decoder", checkpoint="random", data="phantom:tiny?n=4&seed=0", test_data=None, split=[1.0, 0.0],
        tumor_fraction=1.0, max_steps=60, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=0, checkpoint_every=0, eval_at_start=False,
        augment=False, log_with="none", final_test=False, output_dir=str(out / "run"),
        text_prompts={"enabled": True, "model": TINY_TOWER, "checkpoint": "random", "prob": 1.0,
                      "descriptions": DESCRIPTIONS}))
    try:
        result = train(config)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return result


def test_training_makes_liver_and_tumour_texts_segment_their_structures(text_run):
    losses = [json.loads(x)["loss"] for x in (text_run.run_dir / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert len(losses) == 60 and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    # Loaded from the run folder as a user would (the base is the seeded random model of the run).
    torch.manual_seed(0)
    model = samliver.load_model("samliver_tiny", checkpoint="random", adapter=text_run.run_dir)
    predictor = samliver.Predictor(model)
    scores = {("liver", "liver"): [], ("liver", "tumour"): [], ("tumour", "liver"): [], ("tumour", "tumour"): []}
    areas = {"liver": 0, "tumour": 0}
    for seed in (100, 101):                                     # held-out phantoms
        case = samliver.data.make_phantom(seed, preset="tiny")
        label = np.asarray(case.label)
        for z in np.flatnonzero((label == 2).any(axis=(1, 2))):
            predictor.set_image(case.image.array[z])
            pred = predictor.predict(text=["liver", "liver tumor"])
            assert pred.masks.shape == (2, *label.shape[1:])
            for i, asked in enumerate(("liver", "tumour")):
                areas[asked] += int(pred.masks[i].sum())
                for ref_name, ref in (("liver", label[z] >= 1), ("tumour", label[z] == 2)):
                    scores[asked, ref_name].append(dice(pred.masks[i], ref))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["liver", "liver"] > 0.8 and mean["tumour", "liver"] < 0.4          # "liver" finds the liver...
    assert mean["tumour", "tumour"] > max(0.2, mean["liver", "tumour"] + 0.1)     # ..."liver tumor" the tumours
    assert areas["tumour"] < 0.3 * areas["liver"]


def test_adapter_records_the_tower_and_reloads_the_same_projection(text_run, tmp_path):
    config = json.loads((text_run.run_dir / "adapter_config.json").read_text())
    record = config["text_prompts"]
    assert record["tower"] == {"model": TINY_TOWER, "checkpoint": "random", "seed": 0}
    assert [c["descriptions"] for c in record["classes"]] == [DESCRIPTIONS["liver"], DESCRIPTIONS["tumor"]]
    from safetensors.torch import load_file

    saved = load_file(str(text_run.run_dir / "adapter_model.safetensors"))
    text_keys = sorted(k for k in saved if k.startswith("text_prompts."))
    assert text_keys and "text_prompts.known_embeddings" in text_keys
    torch.manual_seed(0)
    loaded = samliver.load_model("samliver_tiny", checkpoint="random", adapter=text_run.run_dir)
    trained = text_run.model.eval()
    for texts in (["liver", "liver tumor"], ["a new description never trained"]):
        np.testing.assert_allclose(text_tokens(loaded, texts)[0], text_tokens(trained, texts)[0], atol=1e-6)
    # A different tower than the one trained with is refused when it is first needed.
    (tmp_path / "adapter").mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / "adapter" / name).write_bytes((text_run.run_dir / name).read_bytes())
    record["tower"]["seed"] = 7
    config["text_prompts"] = record
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    other = samliver.load_model("samliver_tiny", checkpoint="random", adapter=tmp_path / "adapter")
    text_tokens(other, ["liver"])                               # trained descriptions need no tower
    with pytest.raises(TextTowerError, match="does not reproduce the embedding of 'liver'"):
        text_tokens(other, ["hepatic tumour"])
    assert isinstance(other.text_prompts, TextPrompter)


def test_segment_command_and_text_setting(text_run, tmp_path, capsys):
    import nibabel as nib

    from samliver.cli.main import main
    from samliver.io.save import save_image

    case = samliver.data.make_phantom(100, preset="tiny")
    save_image(case.image, tmp_path / "ct.nii.gz")
    torch.manual_seed(0)  # the adapter's base: the run's seeded random samliver_tiny
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", "samliver_tiny", "--checkpoint", "random",
               "--adapter", str(text_run.run_dir), "--text", "liver", "--text", "liver tumor", "--slices", "2-13",
               "-o", str(tmp_path / "mask.nii.gz")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    mask = samliver.load_label(tmp_path / "mask.nii.gz", like=case.image)
    assert nib.load(tmp_path / "mask.nii.gz").shape == nib.load(tmp_path / "ct.nii.gz").shape
    assert not mask[:2].any() and not mask[14:].any()         # only --slices were prompted
    # Same as the Python API: one object per text on each slice, labels from the descriptions' classes.
    torch.manual_seed(0)
    model = samliver.load_model("samliver_tiny", checkpoint="random", adapter=text_run.run_dir)
    tokens, labels = text_tokens(model, ["liver", "liver tumor"])
    expected = samliver.Predictor(model).segment_volume(
        samliver.load_ct(tmp_path / "ct.nii.gz"), {z: Prompts(tokens=tokens, labels=labels) for z in range(2, 14)})
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) == {0, 1, 2}
    rc = main(["segment", str(tmp_path / "ct.nii.gz"), "--model", "samliver_tiny", "--checkpoint", "random",
               "--adapter", str(text_run.run_dir), "--text", "liver", "--slices", "5-40", "-o",
               str(tmp_path / "bad.nii.gz")])
    assert rc == 2 and "--slices" in capsys.readouterr().err and not (tmp_path / "bad.nii.gz").exists()

    # The `text` evaluation setting prompts every slice with the class's first description.
    from samliver.evaluation import evaluate

    result = evaluate(model, "phantom:tiny?n=1&seed=101", prompts="text,box", figures=False)
    row = {(r["setting"], r["target"]): r for r in result.rows}
    assert row["text", "liver"]["dice"] > 0.6
    # each row equals its own computation: every slice prompted with the class's first description
    case = samliver.data.make_phantom(101, preset="tiny")
    label, predictor = np.asarray(case.label), samliver.Predictor(model)
    for target, text, ref in (("liver", "liver", label >= 1), ("tumour", "liver tumor", label == 2)):
        pred = np.zeros(label.shape, bool)
        for z in range(label.shape[0]):
            predictor.set_image(case.image.array[z])
            pred[z] = predictor.predict(text=[text]).masks[0]
        tp = int((pred & ref).sum())
        assert (row["text", target]["tp_voxels"], row["text", target]["pred_voxels"],
                row["text", target]["ref_voxels"]) == (tp, int(pred.sum()), int(ref.sum()))
        assert row["text", target]["dice"] == pytest.approx(2 * tp / (pred.sum() + ref.sum()), abs=1e-9)
    assert row["text", "tumour"]["dice"] > 0.2           # 0.34 when written: "liver tumor" finds the tumour
    assert result.config["settings"][0] == {"name": "text", "class": "TextSetting", "params": {"slices": "all"}}
