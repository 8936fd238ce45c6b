"""``full`` and ``decoder`` strategies, the prompt-free head, precomputed embeddings and
`Predictor.segment_auto`, on samliver_tiny (SAM ViT) and a random SAM 2.1 Hiera-T."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

import samliver
from samliver.adapters import (CONFIG_NAME, WEIGHTS_NAME, AdapterError, apply_strategy, count_trainable,
                               list_strategies, load_adapter, save_adapter)
from samliver.adapters.decoder import (EmbeddingDataset, EmbeddingStore, collate_embeddings, encoder_frozen,
                                       precompute_embeddings)
from samliver.adapters.task_head import NoTaskHeadError, probe_encode
from samliver.errors import SamliverError
from samliver.models.base import ImageEmbedding
from samliver.prompts import Prompts
from tests.conftest import ct_like_slice, randomize_

BOX = np.array([[10, 12, 40, 44]], np.float32)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trainable_ids(model: torch.nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def _ids(*modules: torch.nn.Module) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


def _base(**kwargs):
    """samliver_tiny with random weights, the same ones on every call (the "same base" for adapters)."""
    torch.manual_seed(0)
    return samliver.load_model("samliver_tiny", checkpoint="random", **kwargs)


def _tiny(seed: int = 1):
    return randomize_(_base(), seed=seed)


def _volume(depth: int = 5, height: int = 48, width: int = 64) -> np.ndarray:
    return np.stack([ct_like_slice(height, width, seed=z) for z in range(depth)])


def _labels(hu: np.ndarray) -> np.ndarray:
    """Synthetic 0/1/2 maps: the bright blob is liver, its darker-noise core a 'tumour'."""
    label = (hu > 20).astype(np.int64)
    h, w = hu.shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    core = ((yy - 0.45 * h) / (0.08 * h)) ** 2 + ((xx - 0.35 * w) / (0.07 * w)) ** 2 < 1
    label[..., core] = 2
    return label


@pytest.fixture(scope="module")
def sam2():
    return samliver.load_model("sam2.1_hiera_tiny", checkpoint="random")


def test_both_strategies_are_registered():
    assert {"full", "decoder"} <= set(list_strategies())


# ---------------------------------------------------------------- trainable parameters


def test_encode_probe_finds_the_encoder_and_leaves_the_model_intact():
    model = _tiny()
    hu = ct_like_slice(40, 50)
    before = model.encode(model.preprocess(hu)).image_embeddings
    probe = probe_encode(model)
    assert probe.image_embeddings == (1, 96, 16, 16) and probe.high_res_features == ()
    encoder = {f"sam.image_encoder.{n}" for n, _ in model.image_encoder.named_parameters()}
    assert probe.parameters == encoder
    after = model.encode(model.preprocess(hu)).image_embeddings
    assert torch.equal(before, after) and after.device.type == "cpu"


@pytest.mark.parametrize("method, config, parts", [
    ("full", {}, ("image_encoder", "mask_decoder")),
    ("full", {"train_prompt_encoder": True}, ("image_encoder", "prompt_encoder", "mask_decoder")),
    ("decoder", {}, ("mask_decoder",)),
    ("decoder", {"head": "sam"}, ("mask_decoder",)),
    ("decoder", {"head": "multiclass"}, ("task_head",)),
    ("decoder", {"head": "multiclass", "head_channels": 16, "num_classes": 2}, ("task_head",)),
])
def test_tiny_trainable_parameters_are_exactly_the_strategys(method, config, parts):
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, method, config)
    modules = [getattr(model, p) for p in parts]
    assert count_trainable(model) == sum(_numel(m) for m in modules)
    assert _trainable_ids(model) == _ids(*modules)


def test_tiny_parameter_counts_are_pinned():
    """Written-down numbers, so a change in the tiny model or a strategy shows in review."""
    counts = {}
    for key, method, config in [("full", "full", {}), ("full+prompt", "full", {"train_prompt_encoder": True}),
                                ("decoder/sam", "decoder", {}),
                                ("decoder/multiclass", "decoder", {"head": "multiclass"})]:
        model = samliver.load_model("samliver_tiny", checkpoint="random")
        counts[key] = count_trainable(apply_strategy(model, method, config))
    # image encoder 642,720; prompt encoder 2,540; mask decoder 427,096
    # head: conv3x3 96->64 (55,360) + conv3x3 64->64 (36,928) + 2 x convT 64->64 (16,448)
    #       + 4 x GroupNorm(64) (128) + conv1x1 64->3 (195)
    assert counts == {"full": 1_069_816, "full+prompt": 1_072_356, "decoder/sam": 427_096,
                      "decoder/multiclass": 55_360 + 36_928 + 2 * 16_448 + 4 * 128 + 195}


def test_sam2_trainable_submodules(sam2):
    model = sam2
    hf = model.sam2
    encode_extras = {"sam2.no_memory_embedding", "sam2.mask_decoder.conv_s0.weight", "sam2.mask_decoder.conv_s0.bias",
                     "sam2.mask_decoder.conv_s1.weight", "sam2.mask_decoder.conv_s1.bias"}
    probe = probe_encode(model)
    encoder = {f"sam2.vision_encoder.{n}" for n, _ in hf.vision_encoder.named_parameters()}
    assert probe.parameters == encoder | encode_extras
    assert probe.image_embeddings == (1, 256, 64, 64)
    assert probe.high_res_features == ((1, 32, 256, 256), (1, 64, 128, 128))
    projections = _ids(hf.mask_decoder.conv_s0, hf.mask_decoder.conv_s1)

    apply_strategy(model, "full", {})
    assert _trainable_ids(model) == _ids(hf.vision_encoder, hf.mask_decoder) | {id(hf.no_memory_embedding)}
    assert count_trainable(model) == _numel(hf.vision_encoder) + _numel(hf.mask_decoder) + 256

    apply_strategy(model, "full", {"train_prompt_encoder": True})
    assert count_trainable(model) == _numel(model.sam2)

    apply_strategy(model, "decoder", {"head": "sam"})  # the projections belong to encode: frozen
    assert _trainable_ids(model) == _ids(hf.mask_decoder) - projections
    assert count_trainable(model) == _numel(hf.mask_decoder) - 256 * 32 - 32 - 256 * 64 - 64
    assert encoder_frozen(model)

    apply_strategy(model, "decoder", {"head": "multiclass"})
    assert _trainable_ids(model) == _ids(model.task_head)
    model.train()
    assert not model.image_encoder.training and model.task_head.training
    model.eval()
    # one head forward on embeddings of the probed shapes (a real Hiera encode at 1024 px takes
    # seconds on a CPU): the head adds both high-resolution maps and gives low-res-size logits
    gen = torch.Generator().manual_seed(0)
    emb = ImageEmbedding(torch.randn(probe.image_embeddings, generator=gen),
                         tuple(torch.randn(s, generator=gen) for s in probe.high_res_features))
    with torch.no_grad():
        logits = model.task_head(emb)
    assert logits.shape == (1, 3, model.low_res_size, model.low_res_size)
    for level in range(2):
        moved = list(emb.high_res_features)
        moved[level] = moved[level] + 1.0
        with torch.no_grad():
            assert not torch.equal(model.task_head(ImageEmbedding(emb.image_embeddings, tuple(moved))), logits)


def test_decoder_keeps_the_encoder_frozen_and_in_eval_mode():
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, "decoder", {})
    model.train()
    assert not model.image_encoder.training and model.mask_decoder.training
    assert encoder_frozen(model)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # the hold travels with the model
        twin.eval().train()
        assert not twin.image_encoder.training and twin.mask_decoder.training
    full = apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "full", {})
    assert not encoder_frozen(full)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("method, config, needle", [
    ("full", {"train_decoder": False}, "train_decoder"),
    ("decoder", {"heads": "sam"}, "heads"),
    ("decoder", {"head": "unet"}, "unet"),
    ("decoder", {"head": "multiclass", "num_classes": 1}, "num_classes"),
    ("decoder", {"head": "multiclass", "use_high_res": True}, "use_high_res"),  # the ViT gives none
])
def test_bad_configs_are_refused_by_name(method, config, needle):
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    with pytest.raises(AdapterError, match=needle):
        apply_strategy(model, method, config)
    assert count_trainable(model) == _numel(model) and getattr(model, "task_head", None) is None  # untouched


# ---------------------------------------------------------------- saving and loading


def _perturb_trainable(model: torch.nn.Module, seed: int = 7) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def _outputs(model, hu: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        emb = model.encode(model.preprocess(hu))
        if getattr(model, "task_head", None) is not None:
            return model.task_head(emb)
        return model.decode(emb, Prompts(boxes=BOX), hu.shape).low_res_logits


@pytest.mark.parametrize("method, config", [
    ("full", {}), ("full", {"train_prompt_encoder": True}), ("decoder", {"head": "sam"}),
    ("decoder", {"head": "multiclass", "head_channels": 32})])
def test_saved_adapter_reproduces_the_adapted_model(tmp_path, method, config):
    hu = ct_like_slice(56, 64)
    model = _base()
    base_out = _outputs(model, hu) if method == "full" else None
    apply_strategy(model, method, config)
    _perturb_trainable(model)
    want = _outputs(model.eval(), hu)
    if base_out is not None:
        assert not torch.equal(want, base_out), "degenerate test: the perturbation must change the outputs"
    save_adapter(model, tmp_path)

    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["strategy"] == method

    loaded = _base(adapter=tmp_path)
    assert torch.equal(_outputs(loaded, hu), want)
    assert count_trainable(loaded) == count_trainable(model)


def test_adapter_for_another_base_is_refused(tmp_path, sam2):
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    apply_strategy(model, "decoder", {"head": "multiclass"})
    save_adapter(model, tmp_path)
    with pytest.raises(AdapterError, match=r"samliver_tiny.*sam2\.1_hiera_tiny"):
        load_adapter(sam2, tmp_path)
    other = samliver.load_model("samliver_tiny", checkpoint="random")
    other.checkpoint_sha256 = "ab" * 32
    with pytest.raises(AdapterError, match="random weights.*abab"):
        load_adapter(other, tmp_path)
    assert getattr(other, "task_head", None) is None  # nothing applied on refusal


# ---------------------------------------------------------------- prompt-free segmentation


def test_segment_auto_matches_per_slice_computation():
    model = _tiny()
    apply_strategy(model, "decoder", {"head": "multiclass", "head_channels": 32})
    randomize_(model.task_head, seed=3, std=0.3)
    hu = _volume(3, 48, 64)
    got = samliver.Predictor(model, batch_size=2).segment_auto(hu, cleanup=False)
    assert got.shape == hu.shape and got.dtype == np.uint8
    assert set(np.unique(got)) <= {0, 1, 2} and len(np.unique(got)) > 1
    agree, sure = 0, 0
    with torch.no_grad():
        for z in range(hu.shape[0]):
            emb = model.encode(model.preprocess(hu[z]))
            logits = model.postprocess(model.task_head(emb), hu.shape[1:])[0]
            top2 = logits.topk(2, dim=0).values
            confident = (top2[0] - top2[1] > 1e-4).numpy()  # batched and single-slice encodes may differ in ulps
            ref = logits.argmax(0).numpy().astype(np.uint8)
            agree += int((got[z] == ref)[confident].sum())
            sure += int(confident.sum())
    assert sure > 0.99 * hu[0].size * hu.shape[0] and agree == sure


def test_segment_auto_without_a_head_says_what_is_needed(monkeypatch):
    from samliver.prompts import generators

    monkeypatch.setattr(generators, "_DEFAULTS", {})  # nor a default box generator (tests/test_auto.py)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    with pytest.raises(NoTaskHeadError) as err:
        samliver.Predictor(model).segment_auto(_volume(2, 32, 32))
    message = str(err.value)
    assert isinstance(err.value, SamliverError) and "\n" not in message
    assert "no prompt-free head" in message and "decoder" in message and "multiclass" in message


# ---------------------------------------------------------------- precomputed embeddings and learning


def test_precomputed_embeddings_equal_on_the_fly_encode(tmp_path):
    model = _tiny()
    apply_strategy(model, "decoder", {})
    hu = _volume(3, 40, 52)
    store = precompute_embeddings(model, hu, batch_size=3)
    assert len(store) == 3 and store.image_sizes.tolist() == [[40, 52]] * 3
    with torch.no_grad():
        fly = model.encode(model.preprocess(hu)).image_embeddings
    assert torch.equal(store.image_embeddings, fly)
    small = precompute_embeddings(model, list(hu), batch_size=2)  # a sequence, other batching
    torch.testing.assert_close(small.image_embeddings, fly, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.embedding([0, 2]).image_embeddings, fly[[0, 2]], atol=1e-5, rtol=1e-5)
    assert small.embedding(np.int64(1)).image_embeddings.shape == (1, *fly.shape[1:])
    again = EmbeddingStore.load(store.save(tmp_path / "emb.safetensors"))
    assert torch.equal(again.image_embeddings, store.image_embeddings)
    assert torch.equal(again.image_sizes, store.image_sizes)


def test_precompute_reads_slice_dataset_items_with_labels():
    pytest.importorskip("samliver.data.intensity")
    from samliver.data.intensity import window_to_uint8

    model = _tiny()
    apply_strategy(model, "decoder", {"head": "multiclass"})
    hu = _volume(3, 40, 52)
    grey = window_to_uint8(hu, model.spec.window).astype(np.float32) / 255.0
    items = [{"image": torch.from_numpy(grey[z][None]), "label": torch.from_numpy(_labels(hu[z]))} for z in range(3)]
    store = precompute_embeddings(model, items, batch_size=3)
    with torch.no_grad():
        fly = model.encode(model.preprocess(hu)).image_embeddings
    assert torch.equal(store.image_embeddings, fly)
    assert store.labels is not None and torch.equal(store.labels[2].long(), torch.from_numpy(_labels(hu[2])))


def test_precompute_is_refused_where_the_encoder_trains():
    model = apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "full", {})
    with pytest.raises(AdapterError, match="stale"):
        precompute_embeddings(model, _volume(2, 32, 32))


def test_head_learns_from_precomputed_embeddings_without_running_the_encoder():
    model = _tiny()
    apply_strategy(model, "decoder", {"head": "multiclass", "head_channels": 32})
    hu = _volume(4, 48, 48)
    labels = _labels(hu)
    store = precompute_embeddings(model, hu, batch_size=4)

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran during training")
    model.encode = refuse  # an epoch over precomputed embeddings must never encode

    loader = DataLoader(EmbeddingDataset(store, labels), batch_size=4, shuffle=False, collate_fn=collate_embeddings)
    batch = next(iter(loader))
    assert batch["label"].shape == (4, 48, 48) and batch["embedding"].image_embeddings.shape == (4, 96, 16, 16)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(6):
        for batch in loader:
            logits = model.postprocess(model.task_head(batch["embedding"]), (48, 48))
            loss = loss_fn(logits, batch["label"][:, None])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("task_head."))


@pytest.mark.parametrize("name, config", [(n, {}) for n in list_strategies()]
                         + [("decoder", {"head": "multiclass"})])
def test_attaches_task_head_says_what_apply_does(name, config):
    from samliver.adapters import get_strategy

    strategy = get_strategy(name)
    model = apply_strategy(_base(), name, config)
    says = strategy.attaches_task_head(strategy.config_class.from_dict(config))
    assert says == (getattr(model, "task_head", None) is not None) == (config.get("head") == "multiclass")
