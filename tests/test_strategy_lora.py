"""The ``lora`` strategy (peft LoRA) on the tiny SAM and SAM 2.1 Hiera-T, random weights, CPU."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import samliver
from samliver.adapters import (AdapterError, apply_strategy, count_trainable, get_strategy, list_strategies,
                               load_adapter, save_adapter)
from samliver.adapters.lora import LoraConfig, lora_layers, merge_lora, peft_config
from samliver.models.sam2 import Sam2Segmenter
from samliver.prompts import Prompts
from samliver.registry import get_spec
from conftest import ct_like_slice, randomize_  # tests/ is on sys.path under both pytest and python -m pytest

NAME = "samliver_tiny"
SAM2 = "sam2.1_hiera_tiny"
HU = ct_like_slice(120, 136, seed=3)
BOX = Prompts(boxes=np.array([[20, 25, 80, 90], [60, 30, 120, 100]], np.float32))
SAM_ENCODER_SUFFIXES = {"qkv": (".attn.qkv",), "proj": (".attn.proj",), "mlp": (".mlp.lin1", ".mlp.lin2")}
SAM_DECODER_PROJECTIONS = (".q_proj", ".k_proj", ".v_proj", ".out_proj")


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """The tiny SAM's random base weights (noised, so zero-initialised parts matter) in a file."""
    from safetensors.torch import save_file

    model = samliver.load_model(NAME, checkpoint="random")
    randomize_(model.sam, seed=1)
    path = tmp_path_factory.mktemp("lora_base") / "base.safetensors"
    save_file(model.sam.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def sam2_base():
    return samliver.load_model(SAM2, checkpoint="random")


def _outputs(model) -> tuple[torch.Tensor, ...]:
    """Image embedding, multimask low-res logits and IoU scores for a fixed slice and two boxes."""
    with torch.no_grad():
        emb = model.encode(model.preprocess(HU))
        out = model.decode(emb, BOX, HU.shape, multimask=True)
    return emb.image_embeddings, out.low_res_logits, out.iou_scores


def _linears(module: nn.Module, prefix: str, suffixes: tuple[str, ...]) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules()
            if n.startswith(prefix) and n.endswith(suffixes) and isinstance(m, nn.Linear)}


def _perturb_lora_b(model, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_registered_and_config_round_trip():
    assert "lora" in list_strategies()
    cfg = LoraConfig(rank=8, alpha=16.0, dropout=0.1, encoder_targets=("qkv", "mlp"), decoder_lora=True)
    again = LoraConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.encoder_targets == ("qkv", "mlp")


# ---------------------------------------------------------------- targets and parameter counts


@pytest.mark.parametrize("targets,rank", [(("qkv",), 4), (("qkv", "proj"), 4), (("qkv", "proj", "mlp"), 2),
                                          (("mlp",), 8)])
@pytest.mark.parametrize("train_decoder", [True, False])
def test_trainable_count_sam(base_file, targets, rank, train_decoder):
    model = samliver.load_model(NAME, checkpoint=base_file)
    layers = {}
    for t in targets:
        layers |= _linears(model.sam, "image_encoder.", SAM_ENCODER_SUFFIXES[t])
    expected = sum(rank * (m.in_features + m.out_features) for m in layers.values())
    if train_decoder:
        expected += sum(p.numel() for p in model.sam.mask_decoder.parameters())
    apply_strategy(model, "lora", {"rank": rank, "encoder_targets": list(targets), "train_mask_decoder": train_decoder})
    assert count_trainable(model) == expected
    assert sorted(lora_layers(model.sam)) == sorted(layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("sam.mask_decoder.") for n in trainable)


def test_decoder_lora_targets_decoder_attention(base_file):
    model = samliver.load_model(NAME, checkpoint=base_file)
    enc = _linears(model.sam, "image_encoder.", (".attn.qkv",))
    dec = _linears(model.sam, "mask_decoder.transformer.", SAM_DECODER_PROJECTIONS)
    assert len(dec) == 4 * 7  # 2 two-way blocks x 3 attentions + the final one, 4 projections each
    decoder_numel = sum(p.numel() for p in model.sam.mask_decoder.parameters())
    wrapped = sum(p.numel() for m in dec.values() for p in m.parameters())
    apply_strategy(model, "lora", {"decoder_lora": True})
    assert sorted(lora_layers(model.sam)) == sorted(enc | dec)
    lora = sum(4 * (m.in_features + m.out_features) for m in (enc | dec).values())
    # the decoder trains, except the base weights of the layers LoRA wraps
    assert count_trainable(model) == lora + decoder_numel - wrapped
    for name in dec:
        assert not model.sam.get_submodule(name).get_base_layer().weight.requires_grad


def test_peft_config_translation(base_file):
    model = samliver.load_model(NAME, checkpoint=base_file)
    cfg = LoraConfig(rank=8, alpha=2.0, dropout=0.25, encoder_targets=("proj",))
    pc = peft_config(model, cfg)
    assert (pc.r, pc.lora_alpha, pc.lora_dropout) == (8, 2.0, 0.25)
    assert sorted(pc.target_modules) == sorted(_linears(model.sam, "image_encoder.", (".attn.proj",)))
    apply_strategy(model, "lora", cfg.to_dict())
    layer = next(iter(lora_layers(model.sam).values()))
    assert layer.scaling["default"] == pytest.approx(2.0 / 8)


# ---------------------------------------------------------------- equivalences


def test_zero_initialised_lora_equals_base(base_file):
    base = samliver.load_model(NAME, checkpoint=base_file)
    adapted = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora",
                             {"encoder_targets": ["qkv", "proj", "mlp"], "decoder_lora": True})
    for a, b in zip(_outputs(base), _outputs(adapted)):
        assert torch.equal(a, b)


def test_merged_equals_unmerged_and_exports(base_file, tmp_path):
    from safetensors.torch import save_file

    model = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora",
                           {"encoder_targets": ["qkv", "proj", "mlp"], "decoder_lora": True, "alpha": 8.0})
    base_out = _outputs(samliver.load_model(NAME, checkpoint=base_file))
    _perturb_lora_b(model)
    unmerged = _outputs(model)
    assert not torch.allclose(unmerged[1], base_out[1], atol=1e-3)  # LoRA now changes the outputs
    merge_lora(model)
    assert not lora_layers(model.sam) and model.adapter is None
    merged = _outputs(model)
    for a, b in zip(unmerged, merged):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    base_keys = set(samliver.load_model(NAME, checkpoint=base_file).sam.state_dict())
    assert set(model.sam.state_dict()) == base_keys
    path = tmp_path / "merged.safetensors"
    save_file(model.sam.state_dict(), str(path))
    for a, b in zip(merged, _outputs(samliver.load_model(NAME, checkpoint=path))):
        assert torch.equal(a, b)
    with pytest.raises(AdapterError, match="nothing to merge"):
        merge_lora(model)


# ---------------------------------------------------------------- saving and loading


@pytest.fixture()
def trained_adapter(base_file, tmp_path):
    """A lora-adapted tiny SAM with non-zero LoRA and a changed decoder, and its saved folder."""
    model = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora", {"rank": 4})
    _perturb_lora_b(model)
    randomize_(model.sam.mask_decoder, seed=7, std=0.02)
    folder = save_adapter(model, tmp_path / "adapter")
    return model, folder


def test_save_load_round_trip_exact(base_file, trained_adapter):
    model, folder = trained_adapter
    loaded = samliver.load_model(NAME, checkpoint=base_file, adapter=folder)
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["strategy"] == "lora" and config["config"]["rank"] == 4


def test_saved_keys_are_peft_keys_and_peft_loads_them(base_file, trained_adapter):
    from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    model, folder = trained_adapter
    saved = load_file(str(folder / "adapter_model.safetensors"))
    lora = {k: v for k, v in saved.items() if "lora_" in k}
    base = samliver.load_model(NAME, checkpoint=base_file)
    qkv = _linears(base.sam, "image_encoder.", (".attn.qkv",))
    assert set(lora) == {f"{n}.lora_{ab}.weight" for n in qkv for ab in "AB"}
    base_keys = set(base.sam.state_dict())
    others = set(saved) - set(lora)
    assert others and all(k.startswith("mask_decoder.") and k in base_keys for k in others)
    # peft's own functions, on a freshly injected upstream module
    fresh = samliver.load_model(NAME, checkpoint=base_file)
    inject_adapter_in_model(peft_config(fresh, LoraConfig(rank=4)), fresh.sam, adapter_name="default")
    result = set_peft_model_state_dict(fresh.sam, lora, adapter_name="default")
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]
    reloaded = get_peft_model_state_dict(fresh.sam, adapter_name="default")
    assert set(reloaded) == set(lora) and all(torch.equal(reloaded[k], lora[k]) for k in lora)


def test_adapter_much_smaller_than_base(base_file, trained_adapter):
    _, folder = trained_adapter
    ratio = (folder / "adapter_model.safetensors").stat().st_size / base_file.stat().st_size
    print(f"lora adapter (qkv r=4 + mask decoder) / base size for {NAME}: {ratio:.3f}")
    assert ratio < 0.5


def test_load_refuses_adapter_that_does_not_fit(base_file, trained_adapter):
    model, _ = trained_adapter
    state = get_strategy("lora").trainable_state_dict(model)
    target = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora", {"rank": 4})
    missing = dict(state)
    missing.pop(next(k for k in state if "lora_A" in k))
    with pytest.raises(AdapterError, match="missing"):
        get_strategy("lora").load_trainable_state_dict(target, missing)
    other_rank = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora", {"rank": 2})
    with pytest.raises(AdapterError, match="shape"):
        get_strategy("lora").load_trainable_state_dict(other_rank, state)


# ---------------------------------------------------------------- SAM 2 (Hiera)


def test_sam2_injects_hiera_attention_and_forward_works(sam2_base):
    model = copy.deepcopy(sam2_base)
    backbone = model.sam2.vision_encoder.backbone
    qkv = _linears(model.sam2, "vision_encoder.", (".attn.qkv",))
    assert len(qkv) == len(backbone.blocks)
    decoder_numel = sum(p.numel() for p in model.sam2.mask_decoder.parameters())
    apply_strategy(model, "lora", {"rank": 4})
    assert sorted(lora_layers(model.sam2)) == sorted(qkv)
    assert count_trainable(model) == decoder_numel + sum(4 * (m.in_features + m.out_features) for m in qkv.values())
    # one forward, on the same weights at a 256-pixel input (a 1024-pixel Hiera forward is slow on CPU)
    small = Sam2Segmenter(dataclasses.replace(get_spec(SAM2), input_size=256))
    small.sam2.load_state_dict(sam2_base.sam2.state_dict())
    apply_strategy(small, "lora", {"rank": 4})
    _perturb_lora_b(small)
    emb, logits, iou = _outputs(small)
    assert logits.shape == (2, 3, small.low_res_size, small.low_res_size) and iou.shape == (2, 3)
    assert torch.isfinite(logits).all() and torch.isfinite(emb).all()
    # the saved state (peft keys through transformers' key conversion) loads back into a Sam2Model
    strategy = get_strategy("lora")
    state = strategy.trainable_state_dict(small)
    assert any(k.startswith("vision_encoder.backbone.blocks.0.attn.qkv.lora_B") for k in state)
    strategy.load_trainable_state_dict(model, state)
    again = strategy.trainable_state_dict(model)
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)


def test_sam2_all_targets_and_decoder_lora(sam2_base):
    model = copy.deepcopy(sam2_base)
    enc = _linears(model.sam2, "vision_encoder.backbone.", (".attn.qkv", ".attn.proj", ".mlp.proj_in", ".mlp.proj_out"))
    dec = _linears(model.sam2, "mask_decoder.transformer.", (".q_proj", ".k_proj", ".v_proj", ".o_proj"))
    assert len(dec) == 4 * 7
    apply_strategy(model, "lora", {"encoder_targets": ["qkv", "proj", "mlp"], "decoder_lora": True,
                                   "train_mask_decoder": False})
    assert sorted(lora_layers(model.sam2)) == sorted(enc | dec)
    assert count_trainable(model) == sum(4 * (m.in_features + m.out_features) for m in (enc | dec).values())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("config,match", [
    ({"encoder_targets": ["qkv", "attn"]}, "'attn'"),
    ({"rank": 0}, "rank"),
    ({"dropout": 1.5}, "dropout"),
    ({"encoder_targets": []}, "nothing to adapt"),
    ({"ranks": 4}, "ranks"),
])
def test_bad_config_is_refused_by_name(base_file, config, match):
    model = samliver.load_model(NAME, checkpoint=base_file)
    with pytest.raises(AdapterError, match=match):
        apply_strategy(model, "lora", config)
    assert not lora_layers(model.sam)


def test_unknown_architecture_and_double_apply_are_refused(base_file):
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.ModuleDict({"image_encoder": nn.Sequential(nn.Linear(4, 4)), "mask_decoder": nn.Linear(4, 1)})

        image_encoder = property(lambda self: self.net["image_encoder"])
        mask_decoder = property(lambda self: self.net["mask_decoder"])

    with pytest.raises(AdapterError, match="encoder target 'qkv' cannot apply"):
        apply_strategy(Toy(), "lora")
    with pytest.raises(AdapterError, match="not a promptable segmenter"):
        apply_strategy(nn.Linear(2, 2), "lora")
    model = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora")
    with pytest.raises(AdapterError, match="already"):
        apply_strategy(model, "lora")


def test_load_adapter_for_other_base_is_refused(sam2_base, trained_adapter):
    _, folder = trained_adapter
    with pytest.raises(AdapterError, match="trained on"):
        load_adapter(copy.deepcopy(sam2_base), folder)


# ---------------------------------------------------------------- learning


def test_few_steps_lower_dice_ce_loss(base_file):
    from monai.losses import DiceCELoss

    model = apply_strategy(samliver.load_model(NAME, checkpoint=base_file), "lora", {"rank": 4})
    model.train()
    hu = ct_like_slice(128, 128, seed=1)
    yy, xx = np.mgrid[:128, :128]
    liver = ((yy - 0.45 * 128) / (0.2 * 128)) ** 2 + ((xx - 0.35 * 128) / (0.18 * 128)) ** 2 < 1
    target = torch.as_tensor(liver, dtype=torch.float32)[None, None]
    ys, xs = np.nonzero(liver)
    prompts = Prompts(boxes=np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.float32))
    pixels = model.preprocess(hu)
    loss_fn = DiceCELoss(sigmoid=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(6):
        out = model.decode(model.encode(pixels), prompts, hu.shape)
        loss = loss_fn(model.postprocess(out.low_res_logits, hu.shape), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_A" in n)
    assert losses[-1] < 0.9 * losses[0], losses
