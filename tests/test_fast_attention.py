"""The SDPA fast path of the SAM ViT encoder against upstream, gradient checkpointing, the embedding
cache bound, encoder precision, and the reduced input size."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos

import samliver
from samliver.inference import SliceEncoder
from samliver.models.base import window_to_rgb
from samliver.models.fast_attention import (ENV_VAR, disable_fast_attention, enable_fast_attention,
                                            fast_attention_on, rel_pos_bias)
from tests.conftest import ct_like_slice, randomize_


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=3, std=0.1)


def _upstream_copy(model):
    ref = copy.deepcopy(model)
    assert ref.set_fast_attention(False) == 4 and not ref.fast_attention
    return ref


def test_fast_attention_is_on_by_default_and_reversible(tiny, monkeypatch):
    assert tiny.fast_attention
    attns = [m for m in tiny.sam.image_encoder.modules() if isinstance(m, Attention)]
    assert len(attns) == 4 and all(fast_attention_on(a) for a in attns)
    assert all(type(a) is Attention for a in attns)          # the class (and so peft's targets) is unchanged
    keys = list(tiny.state_dict())
    ref = _upstream_copy(tiny)
    assert not any("forward" in a.__dict__ for a in ref.sam.image_encoder.modules())
    assert list(ref.state_dict()) == keys
    monkeypatch.setenv(ENV_VAR, "0")
    assert not samliver.load_model("samliver_tiny", checkpoint="random").fast_attention
    assert samliver.load_model("samliver_tiny", checkpoint="random", fast_attention=True).fast_attention
    monkeypatch.setenv(ENV_VAR, "1")
    assert not samliver.load_model("samliver_tiny", checkpoint="random", fast_attention=False).fast_attention


def test_tiny_encoder_equals_upstream_in_fp32(tiny):
    ref = _upstream_copy(tiny)
    pixels = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    for grad in (False, True):     # no_grad uses the reused mask buffer, autograd a fresh mask
        with torch.set_grad_enabled(grad):
            got = tiny.encode(pixels).image_embeddings
            want = ref.encode(pixels).image_embeddings
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - ref.encode(pixels.flip(-1)).image_embeddings).abs().max() > 1e-2   # the check can fail


def test_fast_path_gradients_equal_upstream(tiny):
    grads = []
    for model in (copy.deepcopy(tiny), _upstream_copy(tiny)):
        model.train()
        pixels = torch.linspace(-1, 1, 3 * 256 * 256).reshape(1, 3, 256, 256)
        model.encode(pixels).image_embeddings.square().mean().backward()
        attn = model.sam.image_encoder.blocks[1].attn          # a global-attention block
        grads.append([attn.qkv.weight.grad, attn.rel_pos_h.grad, attn.rel_pos_w.grad])
    for got, want in zip(*grads):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("window", [0, 14], ids=["global-64x64", "windowed-14x14"])
def test_full_size_vit_b_attention_equals_upstream(window):
    """ViT-B's real attention (768 channels, 12 heads) at its real grids, as in a 1024-pixel image: a
    global block attends over the whole 64 x 64 token grid; a windowed block (the whole block, which
    pads 64 to 70 and cuts 25 windows of 14 x 14) over each window."""
    torch.manual_seed(0)
    block = Block(768, 12, qkv_bias=True, use_rel_pos=True, window_size=window, input_size=(64, 64))
    randomize_(block, seed=1, std=0.05).eval()
    x = torch.randn(1, 64, 64, 768)
    run = block.attn if window == 0 else block       # the global attention alone: its block adds only the MLP
    with torch.no_grad():
        want = run(x)
        assert enable_fast_attention(block) == 1
        got = run(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
    disable_fast_attention(block)
    assert not fast_attention_on(block.attn)


def test_bias_uses_get_rel_pos_interpolation():
    """At a grid other than the trained one the bias uses upstream's interpolated tables (reduced input size)."""
    torch.manual_seed(0)
    attn = randomize_(Attention(32, 2, use_rel_pos=True, input_size=(8, 8)), std=0.3)
    q = torch.randn(1, 2, 5 * 5, 16)
    bias = rel_pos_bias(attn, q, (5, 5)).reshape(2, 5, 5, 5, 5)
    rh, rw = get_rel_pos(5, 5, attn.rel_pos_h), get_rel_pos(5, 5, attn.rel_pos_w)   # (5, 5, 16), interpolated
    r = q.reshape(2, 5, 5, 16)
    i, j, k, l = 3, 1, 0, 4
    want = r[:, i, j] @ rh[i, k] + r[:, i, j] @ rw[j, l]
    torch.testing.assert_close(bias[:, i, j, k, l], want, rtol=1e-5, atol=1e-6)


def test_predictor_masks_equal_upstream_predictor_with_fast_path(tiny):
    ref_model = _upstream_copy(tiny)
    hu = ct_like_slice(160, 192, seed=4)
    ours = samliver.Predictor(tiny)
    ours.set_image(hu)
    ref = SamPredictor(ref_model.sam)
    ref.set_image(window_to_rgb(hu, tiny.spec.window))
    for box in ([20, 30, 90, 110], [60, 10, 150, 70]):
        got = ours.predict(box=box)
        masks, scores, _ = ref.predict(box=np.asarray(box), multimask_output=False, return_logits=True)
        np.testing.assert_array_equal(got.masks[0], masks[0] > 0)
        np.testing.assert_allclose(got.logits[0], masks[0], atol=2e-4, rtol=1e-4)
        assert 0.0 < got.masks.mean() < 1.0


def test_lora_works_on_top_of_the_fast_path(tiny):
    from samliver.adapters import apply_strategy

    fast = apply_strategy(copy.deepcopy(tiny), "lora", {"rank": 4})
    assert fast.fast_attention
    for name, p in fast.named_parameters():   # LoRA B starts at zero: make the adapter matter
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_(0, 0.1)
    slow = copy.deepcopy(fast)
    slow.set_fast_attention(False)
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    got, want = fast.encode(pixels).image_embeddings, slow.encode(pixels).image_embeddings
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (want - _upstream_copy(tiny).encode(pixels).image_embeddings).abs().max() > 1e-3   # LoRA acts


def test_gradient_checkpointing_same_gradients_with_fast_path_and_lora(tiny):
    from samliver.adapters import apply_strategy
    from samliver.training.steps import enable_gradient_checkpointing

    grads = []
    for wrap in (False, True):
        torch.manual_seed(0)        # peft draws LoRA A at random
        model = apply_strategy(copy.deepcopy(tiny), "lora", {"rank": 4}).train()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
        if wrap:
            assert enable_gradient_checkpointing(model) == 4
        pixels = torch.linspace(-1, 1, 3 * 256 * 256).reshape(1, 3, 256, 256)
        torch.manual_seed(1)        # LoRA dropout: the same draws in both runs (checkpointing replays them)
        model.encode(pixels).image_embeddings.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and "lora" in n})
    assert len(grads[0]) == 8 and all(g.abs().max() > 0 for g in grads[0].values())
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_flag_reaches_the_encoder(tmp_path, monkeypatch):
    from samliver.training import loop
    from tests.test_training import run, small

    wrapped = []
    original = loop.enable_gradient_checkpointing
    monkeypatch.setattr(loop, "enable_gradient_checkpointing", lambda model: wrapped.append(original(model)))
    run(small(tmp_path / "ckpt", max_steps=1, eval_every=0, checkpoint_every=0, gradient_checkpointing=True))
    assert wrapped == [4]


def test_embedding_cache_never_exceeds_its_size(tiny, monkeypatch):
    hu = np.stack([ct_like_slice(64, 64, seed=s) for s in range(9)])
    encoded = []
    original = type(tiny).encode

    def counting(self, pixels):
        encoded.append(pixels.shape[0])
        return original(self, pixels)

    monkeypatch.setattr(type(tiny), "encode", counting)
    enc = SliceEncoder(tiny, batch_size=2, cache_size=3)
    reference = {z: e.image_embeddings for z, e in SliceEncoder(tiny, batch_size=1, cache_size=9)
                 .encode(hu, range(9)).items()}
    encoded.clear()
    for wanted in ([0, 1, 2, 3, 4, 5, 6, 7, 8], [7, 8], [0, 1, 7, 8, 2], [8, 8, 3], list(range(9))[::-1]):
        before = len(encoded)
        got = enc.encode(hu, wanted)
        assert len(enc._cache) <= 3
        assert sorted(got) == sorted(set(wanted))
        for z, e in got.items():
            torch.testing.assert_close(e.image_embeddings, reference[z], rtol=1e-5, atol=1e-5)
        for e in enc._cache.values():   # entries own their storage: an evicted batch is really freed
            assert e.image_embeddings.untyped_storage().nbytes() == e.image_embeddings.numel() * 4
        if wanted == [7, 8]:
            assert len(encoded) == before                   # both still cached from the first call
        if wanted == [0, 1, 7, 8, 2]:
            assert sum(encoded[before:]) == 3               # 7, 8 hit; 0, 1, 2 were evicted
    assert len(enc._cache) == 3


def test_bf16_encoder_keeps_fp32_embeddings_and_masks(tiny):
    hu = ct_like_slice(96, 96, seed=5)[None].repeat(2, 0)
    got = SliceEncoder(tiny, precision="bf16").encode(hu, [0])[0].image_embeddings
    want = SliceEncoder(tiny).encode(hu, [0])[0].image_embeddings
    assert got.dtype == torch.float32
    assert (got - want).abs().max() / want.abs().max() < 0.05
    assert (got != want).any()                                  # bf16 really ran
    from samliver.speed import PrecisionError

    with pytest.raises(PrecisionError, match="'fp8' is unknown"):
        SliceEncoder(tiny, precision="fp8")


def test_reduced_input_size_resizes_position_embeddings(tmp_path):
    from safetensors.torch import save_file

    from samliver.models.loading import InputSizeError

    torch.manual_seed(0)
    full = randomize_(samliver.load_model("samliver_tiny", checkpoint="random"), seed=6, std=0.1)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in full.sam.state_dict().items()}, str(path))
    small = samliver.load_model("samliver_tiny", checkpoint=path, input_size=128)
    enc, enc_full = small.sam.image_encoder, full.sam.image_encoder
    assert small.input_size == 128 and small.low_res_size == 32 and tuple(enc.pos_embed.shape) == (1, 8, 8, 96)
    # global blocks (1, 3): tables resized as get_rel_pos would at run time; windowed blocks (0, 2) unchanged
    assert enc_full.blocks[1].attn.rel_pos_h.shape == (31, 24)
    assert enc.blocks[1].attn.rel_pos_h.shape == (15, 24) and enc.blocks[0].attn.rel_pos_h.shape == (15, 24)
    torch.testing.assert_close(enc.blocks[0].attn.rel_pos_w, enc_full.blocks[0].attn.rel_pos_w)
    x = torch.randn(1, 8, 8, 96)
    with torch.no_grad():   # the resized table gives what upstream's run-time interpolation of the original gives
        want = enc_full.blocks[1].attn(x)
        torch.testing.assert_close(enc.blocks[1].attn(x), want, rtol=1e-5, atol=1e-5)
    hu = ct_like_slice(100, 120, seed=7)
    pred = samliver.Predictor(small)
    pred.set_image(hu)
    out = pred.predict(box=[10, 20, 80, 90])
    assert out.masks.shape == (1, 100, 120) and out.low_res_logits.shape == (1, 1, 32, 32)
    with pytest.raises(InputSizeError, match="multiple of 16"):
        samliver.load_model("samliver_tiny", checkpoint="random", input_size=100)


def test_compiled_encoder_keeps_its_keys_and_outputs(tiny):
    from samliver.speed import compile_encoder

    model = copy.deepcopy(tiny)
    keys = list(model.state_dict())
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = model.encode(pixels).image_embeddings
        compile_encoder(model, backend="eager")          # dynamo tracing through the fast path, no codegen
        got = model.encode(pixels).image_embeddings
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
