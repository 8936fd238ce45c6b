"""``depth3d``: 3D depth adapters in the image encoder blocks, on samliver_tiny (SAM ViT) and a
small SAM 2.1 Hiera-T; stack-aware inference through `SliceEncoder`."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import samliver
from samliver.adapters import AdapterError, apply_strategy, count_trainable, get_strategy, save_adapter
from samliver.inference import SliceEncoder, decode_objects, stack_indices
from samliver.models.base import PromptableSegmenter
from samliver.prompts import Prompts
from tests.conftest import ct_like_slice, randomize_

TINY_DIM, TINY_BLOCKS = 96, 4


def _adapter_numel(dim: int, r: int, kd: int, ks: int = 1) -> int:
    """down Linear(C, r) + Conv3d(r, r, (kd, ks, ks)) + up Linear(r, C), all with bias."""
    return (dim * r + r) + (r * r * kd * ks * ks + r) + (r * dim + dim)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _adapter_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".depth_adapter." in n]


@pytest.fixture(scope="module")
def base():
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    return randomize_(model, seed=1)


def _adapted(base_model, seed: int | None = 3, **config):
    """A depth3d copy of ``base_model``; with ``seed``, its adapters get seeded non-zero weights."""
    model = apply_strategy(copy.deepcopy(base_model), "depth3d", config)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in _adapter_params(model):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _volume(n: int, size: int = 64) -> np.ndarray:
    return np.stack([ct_like_slice(size, size, seed=s) for s in range(n)])


# ---------------------------------------------------------------- parameters and config


def test_trainable_parameter_counts_samliver_tiny(base):
    decoder = _numel(base.mask_decoder)
    model = apply_strategy(copy.deepcopy(base), "depth3d", {})  # D 5, r 32, kd 3, all blocks, decoder
    per_block = (96 * 32 + 32) + (32 * 32 * 3 + 32) + (32 * 96 + 96)
    assert per_block == 9376
    assert count_trainable(model) == TINY_BLOCKS * per_block + decoder == 37504 + decoder
    assert model.stack_depth == 5
    saved = get_strategy("depth3d").trainable_state_dict(model)
    assert all(".depth_adapter." in k or k.startswith("sam.mask_decoder.") for k in saved)
    assert "sam.image_encoder.blocks.3.depth_adapter.up.weight" in saved

    small = apply_strategy(copy.deepcopy(base), "depth3d", dict(
        depth=3, bottleneck=8, kernel_depth=3, kernel_spatial=3, blocks=[1, 3], train_mask_decoder=False))
    assert count_trainable(small) == 2 * _adapter_numel(TINY_DIM, 8, 3, 3) == 2 * ((96 * 8 + 8) + (8 * 8 * 27 + 8)
                                                                                  + (8 * 96 + 96))
    assert sorted({n.split(".depth_adapter")[0] for n, p in small.named_parameters() if p.requires_grad}) == [
        "sam.image_encoder.blocks.1", "sam.image_encoder.blocks.3"]


@pytest.mark.parametrize("config, message", [
    (dict(depth=4), r"depth: need an odd integer"),
    (dict(kernel_depth=0), r"kernel_depth: need an odd integer"),
    (dict(kernel_spatial=5), r"kernel_spatial: 1 or 3"),
    (dict(bottleneck=0), r"bottleneck: need an integer >= 1"),
    (dict(blocks=[0, 9]), r"need block indices in 0\.\.3"),
    (dict(blocks="stages:1"), r"stage\(s\) \[1\] outside this encoder's stages 0\.\.0"),
    (dict(blocks="some"), r"unknown choice 'some'"),
    (dict(rank=4), r"unknown Depth3dConfig key"),
])
def test_bad_configs_are_refused_by_name(base, config, message):
    with pytest.raises(AdapterError, match=message):
        apply_strategy(copy.deepcopy(base), "depth3d", config)


def test_apply_twice_and_non_sam_models_are_refused(base):
    model = apply_strategy(copy.deepcopy(base), "depth3d", {})
    with pytest.raises(AdapterError, match="already has depth adapters"):
        apply_strategy(model, "depth3d", {})
    with pytest.raises(AdapterError, match="neither"):
        apply_strategy(torch.nn.Linear(2, 2), "depth3d", {})


# ---------------------------------------------------------------- the adapted encoder


def test_zero_initialised_adapters_equal_the_base_per_slice(base):
    model = _adapted(base, seed=None, depth=3)
    pixels = base.preprocess(_volume(3))
    with torch.no_grad():
        stacked = model.encode(pixels).image_embeddings
        alone = torch.cat([base.encode(pixels[i:i + 1]).image_embeddings for i in range(3)])
    assert stacked.shape == (3, 96, 16, 16)
    torch.testing.assert_close(stacked, alone, atol=1e-5, rtol=1e-5)


def test_depth_mixing_reaches_the_centre_slice_only_with_adapters(base):
    model = _adapted(base, depth=3)
    vol = _volume(5)
    pixels = base.preprocess(vol)
    swapped = pixels[[3, 1, 4]]  # same centre slice, other neighbours
    with torch.no_grad():
        centre = model.encode(pixels[:3]).image_embeddings[1]
        centre_swapped = model.encode(swapped).image_embeddings[1]
        plain = base.encode(pixels[:3]).image_embeddings[1]
        plain_swapped = base.encode(swapped).image_embeddings[1]
    assert (centre - centre_swapped).abs().max() > 1e-3
    torch.testing.assert_close(plain, plain_swapped, atol=1e-5, rtol=1e-5)
    assert (centre - plain).abs().max() > 1e-3
    with pytest.raises(AdapterError, match="batch of 2 images, but the model's stack_depth is 3"):
        model.encode(pixels[:2])


def test_saved_adapter_reloads_to_the_same_outputs(base, tmp_path):
    checkpoint = tmp_path / "tiny_base.pth"
    torch.save(base.sam.state_dict(), checkpoint)
    model = _adapted(samliver.load_model("samliver_tiny", checkpoint=checkpoint), depth=3, bottleneck=16)
    save_adapter(model, tmp_path / "adapter")
    reloaded = samliver.load_model("samliver_tiny", checkpoint=checkpoint, adapter=tmp_path / "adapter")
    assert reloaded.stack_depth == 3 and reloaded.adapter == model.adapter
    pixels = base.preprocess(_volume(3))
    prompts = Prompts(boxes=[[10, 10, 50, 50]])
    with torch.no_grad():
        a, b = model.encode(pixels), reloaded.encode(pixels)
        out_a = model.decode(a.select(1), prompts, (64, 64))
        out_b = reloaded.decode(b.select(1), prompts, (64, 64))
    assert torch.equal(a.image_embeddings, b.image_embeddings)
    assert torch.equal(out_a.low_res_logits, out_b.low_res_logits)
    assert torch.equal(out_a.iou_scores, out_b.iou_scores)


# ---------------------------------------------------------------- stack-aware inference


def test_stack_indices_repeat_the_edge_slices():
    np.testing.assert_array_equal(stack_indices(0, 10, 5), [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(stack_indices(4, 10, 5), [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(stack_indices(9, 10, 3), [8, 9, 9])
    np.testing.assert_array_equal(stack_indices(0, 1, 3), [0, 0, 0])
    np.testing.assert_array_equal(stack_indices(2, 4, 1), [2])
    with pytest.raises(ValueError, match="odd number"):
        stack_indices(0, 4, 2)
    with pytest.raises(ValueError, match="outside the volume's 4 slices"):
        stack_indices(4, 4, 3)


def test_segment_volume_encodes_each_slice_in_its_centred_stack(base, monkeypatch):
    model = _adapted(base, depth=3)
    vol = _volume(4)
    prompts = {0: Prompts(boxes=[[8, 8, 50, 52]], labels=[1]), 2: Prompts(boxes=[[12, 6, 44, 40]], labels=[2])}
    calls = []
    original = model.encode
    monkeypatch.setattr(model, "encode", lambda pixels: calls.append(pixels.shape[0]) or original(pixels))
    predictor = samliver.Predictor(model, batch_size=2)
    out = predictor.segment_volume(vol, prompts)
    assert calls == [6]  # one call: two stacks of three slices
    predictor.segment_volume(vol, prompts)
    assert calls == [6]  # cached
    assert not out[[1, 3]].any()
    cached = predictor.encoder.encode(vol, [0, 2])
    for z, p in prompts.items():
        with torch.no_grad():
            manual = original(model.preprocess(vol[stack_indices(z, 4, 3)])).select(1)
        torch.testing.assert_close(cached[z].image_embeddings, manual.image_embeddings, atol=1e-5, rtol=1e-5)
        masks = decode_objects(model, manual, p, (64, 64)).masks
        assert 0 < masks.sum() < masks.size
        np.testing.assert_array_equal(out[z], np.where(masks[0], p.labels[0], 0))


def test_lone_slices_and_box_propagation_run_with_stacks(base):
    model = _adapted(base, depth=3)
    vol = _volume(5)
    predictor = samliver.Predictor(model)
    predictor.set_image(vol[1])  # a lone slice: a stack of three copies
    with torch.no_grad():
        own = model.encode(model.preprocess(vol[[1, 1, 1]])).select(1)
    torch.testing.assert_close(predictor._embedding.image_embeddings, own.image_embeddings, atol=1e-5, rtol=1e-5)
    out = predictor.propagate_volume(vol, 2, Prompts(boxes=[[8, 8, 50, 52]], labels=[1]))
    assert out.shape == vol.shape and out[2].any()


def test_stack_depth_one_keeps_the_plain_cache_keys(base):
    encoder = SliceEncoder(base)
    vol = _volume(2)
    encoder.encode(vol, [0, 1])
    assert list(encoder._cache) == [SliceEncoder._key(vol[z], None) for z in (0, 1)]


# ---------------------------------------------------------------- training


def test_a_few_steps_on_a_stack_lower_dice_ce(base):
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    model = _adapted(base, seed=None, depth=3, bottleneck=16).train()
    vol = _volume(3)  # 64x64 slices: the 64x64 low-res logits cover each slice exactly
    target = torch.from_numpy(vol > 20).float()[:, None]  # the 'liver' blob, (3, 1, 64, 64)
    prompts = Prompts(boxes=[[5, 10, 40, 48]])
    pixels = model.preprocess(vol)
    loss_fn = DiceCELoss(sigmoid=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(4):
        emb = model.encode(pixels)
        logits = torch.cat([model.decode(emb.select(i), prompts, (64, 64)).low_res_logits for i in range(3)])
        loss = loss_fn(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("depth_adapter.up.weight"))
    assert all(p.grad is None for n, p in model.named_parameters() if ".attn." in n)


# ---------------------------------------------------------------- SAM 2 (Hiera)


@pytest.fixture(scope="module")
def sam2_small():
    from samliver.models.sam2 import Sam2Segmenter
    from samliver.registry import get_spec

    model = Sam2Segmenter(dataclasses.replace(get_spec("sam2.1_hiera_tiny"), input_size=128))  # small, for speed
    return randomize_(model, seed=4, std=0.02).eval()


def test_sam2_counts_every_stage_pooling_blocks_included(sam2_small, monkeypatch):
    decoder = _numel(sam2_small.mask_decoder)
    # Hiera-T: stages of 1, 2, 7, 2 blocks; the first block of stages 1-3 pools and doubles the channels.
    dims = [96] + [192] * 2 + [384] * 7 + [768] * 2
    model = apply_strategy(copy.deepcopy(sam2_small), "depth3d", {"depth": 3})
    assert count_trainable(model) == sum(_adapter_numel(c, 32, 3) for c in dims) + decoder
    staged = apply_strategy(copy.deepcopy(sam2_small), "depth3d",
                            {"depth": 3, "bottleneck": 8, "blocks": "stages:1,3", "train_mask_decoder": False})
    assert count_trainable(staged) == sum(_adapter_numel(c, 8, 3) for c in [192, 192, 768, 768])
    names = {n.split(".depth_adapter")[0] for n, p in staged.named_parameters() if p.requires_grad}
    assert names == {f"sam2.vision_encoder.backbone.blocks.{i}" for i in (1, 2, 10, 11)}
    # The video model cannot hold the adapters: an adapted SAM 2 model propagates with boxes.
    called = []
    monkeypatch.setattr(PromptableSegmenter, "propagate", lambda self, *a, **k: called.append(a[1]) or "boxes")
    with pytest.warns(UserWarning, match="propagating boxes slice by slice"):
        assert staged.propagate(np.zeros((3, 8, 8), np.float32), 1, Prompts(boxes=[[1, 1, 4, 4]])) == "boxes"
    assert called == [1]


def test_sam2_zero_init_equals_base_and_adapters_mix_depth(sam2_small):
    model = _adapted(sam2_small, seed=None, depth=3, blocks="stages:1,2")
    pixels = sam2_small.preprocess(_volume(5))
    with torch.no_grad():
        base_out = sam2_small.encode(pixels[:3])
        zero_out = model.encode(pixels[:3])
        for p in _adapter_params(model):
            p.add_(torch.randn_like(p) * 0.1)
        mixed = model.encode(pixels[:3])
        swapped = model.encode(pixels[[3, 1, 4]])  # same centre slice, other neighbours
    torch.testing.assert_close(zero_out.image_embeddings, base_out.image_embeddings, atol=1e-5, rtol=1e-5)
    for a, b in zip(zero_out.high_res_features, base_out.high_res_features):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (mixed.image_embeddings[1] - base_out.image_embeddings[1]).abs().max() > 1e-3
    assert (mixed.image_embeddings[1] - swapped.image_embeddings[1]).abs().max() > 1e-4
