"""Hugging Face ``SamModel`` checkpoints load into our ``segment_anything``-based SAM wrapper
and compute the same thing: encoder embeddings, and decoder masks/IoU for every prompt kind."""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file  # noqa: E402
from transformers import SamConfig, SamModel  # noqa: E402

from samliver.errors import CheckpointError  # noqa: E402
from samliver.models import ImageEmbedding, load_model  # noqa: E402
from samliver.models.convert_hf_sam import hf_to_sam_state_dict, is_hf_sam_state_dict  # noqa: E402
from samliver.models.sam import build_sam_module  # noqa: E402
from samliver.prompts import Prompts  # noqa: E402
from samliver.registry import get_spec  # noqa: E402

ATOL = 1e-4
LOGIT_ATOL = 1e-3
IMAGE_SIZE = (200, 300)  # a non-square slice: the SAM convention maps the longest side to S


def hf_config(name: str, decoder_eps: float = 1e-5) -> SamConfig:
    """A ``SamConfig`` with the architecture of our registered model ``name``.

    ``decoder_eps``: HF's two-way-transformer LayerNorms default to eps 1e-6 where Meta's use
    torch's 1e-5; 1e-5 makes the two compute the same function (HF's default: see
    ``test_hf_default_layer_norm_eps_differs_only_slightly``).
    """
    spec = get_spec(name)
    o, size = spec.options, spec.input_size
    dim = o.get("prompt_dim", 256)
    return SamConfig(
        vision_config=dict(hidden_size=o["embed_dim"], num_hidden_layers=o["depth"], num_attention_heads=o["num_heads"],
                           global_attn_indexes=list(o["global_attn_indexes"]), window_size=o.get("window_size", 14),
                           image_size=size, patch_size=16, output_channels=dim, num_pos_feats=dim // 2, mlp_ratio=4.0),
        prompt_encoder_config=dict(hidden_size=dim, image_size=size, patch_size=16,
                                   mask_input_channels=o.get("mask_in_chans", 16)),
        mask_decoder_config=dict(hidden_size=dim, mlp_dim=o.get("decoder_mlp_dim", 2048),
                                 num_attention_heads=o.get("decoder_heads", 8), num_hidden_layers=2,
                                 iou_head_depth=3, iou_head_hidden_dim=o.get("iou_hidden_dim", 256),
                                 layer_norm_eps=decoder_eps),
    )


def random_hf_sam(name: str, seed: int = 0, decoder_eps: float = 1e-5) -> SamModel:
    """A ``SamModel`` whose every parameter is drawn afresh (many init to 0 or 1, which would hide mistakes)."""
    torch.manual_seed(seed)
    model = SamModel(hf_config(name, decoder_eps)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            mean = 0.0
            if pname.endswith("positional_embedding"):
                std = 1.0  # the scale of SAM's random Fourier matrix
            elif "norm" in pname and pname.endswith("weight"):
                mean, std = 1.0, 0.2
            elif p.ndim >= 2 and "embed" not in pname and "token" not in pname:
                std = p[0].numel() ** -0.5  # fan-in scaling keeps activations O(1)
            else:
                std = 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std + mean)
    return model


def hf_state(model: SamModel) -> dict[str, torch.Tensor]:
    # clone: the two tied positional-embedding keys share memory, which save_file refuses
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    hf = random_hf_sam("samliver_tiny")
    path = tmp_path_factory.mktemp("hf") / "model.safetensors"
    save_file(hf_state(hf), str(path))
    return hf, load_model("samliver_tiny", checkpoint=path)


@pytest.fixture(scope="module")
def tiny_embedding(tiny_pair):
    hf, ours = tiny_pair
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 200, (2, *IMAGE_SIZE)).astype(np.float32)
    pixels = ours.preprocess(hu)
    with torch.no_grad():
        return hf.get_image_embeddings(pixels), ours.encode(pixels).image_embeddings


def test_tiny_image_embeddings_match(tiny_embedding):
    theirs, ours = tiny_embedding
    assert ours.shape == theirs.shape == (2, 96, 16, 16)
    assert ours.abs().mean() > 0.1  # not a degenerate (all-zero) output
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


PROMPTS = {
    "boxes": dict(boxes=np.array([[20, 30, 150, 120], [100, 50, 280, 190]], np.float32)),
    "points": dict(points=np.array([[[60, 70], [200, 150], [10, 180]], [[250, 40], [120, 100], [30, 20]]], np.float32),
                   point_labels=np.array([[1, 0, 1], [1, 1, 0]], np.int64)),
    "box+points": dict(boxes=np.array([[20, 30, 150, 120], [100, 50, 280, 190]], np.float32),
                       points=np.array([[[60, 70], [90, 110]], [[250, 40], [150, 100]]], np.float32),
                       point_labels=np.array([[1, 0], [0, 1]], np.int64)),
    "box+mask": dict(boxes=np.array([[20, 30, 150, 120]], np.float32), masks=np.random.default_rng(1).normal(
        0, 3, (1, 1, 64, 64)).astype(np.float32)),
}


def hf_inputs(ours, prompts: Prompts) -> dict[str, torch.Tensor]:
    """HF ``SamModel`` prompt inputs (batch 1, N objects) in model-input pixels, as ``ours.decode`` maps them."""
    conv, inputs = ours.convention, {}
    if prompts.boxes is not None:
        inputs["input_boxes"] = torch.from_numpy(conv.map_boxes(prompts.boxes, IMAGE_SIZE))[None]
    if prompts.points is not None:
        inputs["input_points"] = torch.from_numpy(conv.map_coords(prompts.points, IMAGE_SIZE))[None]
        inputs["input_labels"] = torch.as_tensor(prompts.point_labels)[None]
    if prompts.masks is not None:
        inputs["input_masks"] = torch.as_tensor(prompts.masks)
    return inputs


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_tiny_decoder_matches(tiny_pair, tiny_embedding, kind, multimask):
    """End to end in float32, through samliver's own decode (prompts in slice pixels)."""
    hf, ours = tiny_pair
    emb = tiny_embedding[1][1:2]  # the second image
    prompts = Prompts(**PROMPTS[kind])
    with torch.no_grad():
        theirs = hf(image_embeddings=emb, multimask_output=multimask, **hf_inputs(ours, prompts))
        out = ours.decode(ImageEmbedding(emb), prompts, IMAGE_SIZE, multimask=multimask)
    n, m = len(prompts.boxes if prompts.boxes is not None else prompts.points), 3 if multimask else 1
    assert out.low_res_logits.shape == (n, m, 64, 64) and out.iou_scores.shape == (n, m)
    assert out.low_res_logits.std() > 0.3
    # Each float32 implementation alone is 1e-4..8e-4 off the float64 result for these random
    # weights (logits up to ~6), so the logits get roundoff room; float64 below is exact.
    torch.testing.assert_close(out.low_res_logits, theirs.pred_masks[0], atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(out.iou_scores, theirs.iou_scores[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_tiny_prompt_encoder_and_float64_decoder_are_exact(tiny_pair, kind):
    """Prompt encoders agree in float32; the mask decoders, given the same inputs, agree to 1e-9 in float64."""
    hf, ours = tiny_pair
    sam, prompts = ours.sam, Prompts(**PROMPTS[kind])
    inputs = hf_inputs(ours, prompts)
    points = None if prompts.points is None else (inputs["input_points"][0], inputs["input_labels"][0])
    boxes = inputs["input_boxes"][0] if "input_boxes" in inputs else None
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=inputs.get("input_masks"))
        hf_sparse, hf_dense = hf.prompt_encoder(inputs.get("input_points"), inputs.get("input_labels"),
                                                inputs.get("input_boxes"), inputs.get("input_masks"))
        pe = sam.prompt_encoder.get_dense_pe()
        torch.testing.assert_close(sparse, hf_sparse[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(*torch.broadcast_tensors(dense, hf_dense), atol=1e-5, rtol=0)  # (N|1, C, h, w)
        torch.testing.assert_close(pe, hf.get_image_wide_positional_embeddings(), atol=1e-6, rtol=0)

        emb = torch.randn(1, 96, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        ours64, theirs64 = copy.deepcopy(sam.mask_decoder).double(), copy.deepcopy(hf.mask_decoder).double()
        for multimask in (False, True):
            logits, iou = ours64(image_embeddings=emb, image_pe=pe.double(), sparse_prompt_embeddings=sparse.double(),
                                 dense_prompt_embeddings=dense.double(), multimask_output=multimask)
            hf_logits, hf_iou = theirs64(image_embeddings=emb, image_positional_embeddings=pe.double(),
                                         sparse_prompt_embeddings=sparse.double()[None],
                                         dense_prompt_embeddings=dense[:1].double(),  # HF: one per image
                                         multimask_output=multimask)[:2]
            assert logits.std() > 0.3
            torch.testing.assert_close(logits, hf_logits[0], atol=1e-9, rtol=0)
            torch.testing.assert_close(iou, hf_iou[0], atol=1e-9, rtol=0)


def test_detects_hf_layouts(tiny_pair):
    hf, ours = tiny_pair
    sd = hf_state(hf)
    assert is_hf_sam_state_dict(sd)
    assert is_hf_sam_state_dict({f"model.{k}": v for k, v in sd.items()})
    assert not is_hf_sam_state_dict(ours.sam.state_dict())
    sam2_like = {k: torch.zeros(1) for k in ("vision_encoder.backbone.patch_embed.projection.weight",
                                             "vision_encoder.neck.convs.0.weight", "prompt_encoder.point_embed.weight",
                                             "mask_decoder.upscale_conv1.weight")}
    assert not is_hf_sam_state_dict(sam2_like)


@pytest.mark.parametrize("variant", ["prefixed", "one_tied_key"])
def test_wrapped_and_deduplicated_checkpoints_convert(tiny_pair, variant):
    hf, ours = tiny_pair
    sd = hf_state(hf)
    if variant == "prefixed":
        sd = {f"sam.{k}": v for k, v in sd.items()}
    else:  # save_pretrained keeps one of two tied tensors
        del sd["shared_image_embedding.positional_embedding"]
    converted = hf_to_sam_state_dict(sd)
    expected = ours.sam.state_dict()
    assert converted.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(converted[k], v), k


def test_unknown_key_is_named(tiny_pair, tmp_path):
    hf, _ = tiny_pair
    sd = hf_state(hf)
    sd["vision_encoder.layers.0.attn.extra_gate.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"vision_encoder\.layers\.0\.attn\.extra_gate\.weight"):
        hf_to_sam_state_dict(sd)
    path = tmp_path / "extra.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match="extra_gate"):
        load_model("samliver_tiny", checkpoint=path)


def test_untied_positional_embeddings_are_refused(tiny_pair):
    sd = hf_state(tiny_pair[0])
    sd["shared_image_embedding.positional_embedding"] = sd["shared_image_embedding.positional_embedding"] + 1
    with pytest.raises(CheckpointError, match="positional_embedding"):
        hf_to_sam_state_dict(sd)


# A full ViT-B forward at 1024 takes ~50 s per model on 2 CPU cores, so by default the encoders
# run their first 3 blocks (2 windowed with padding 64 -> 70, 1 global) and the neck; every
# block's keys and shapes are still checked. SAMLIVER_SLOW_TESTS=1 runs all 12 blocks.
VIT_B_BLOCKS = 12 if os.environ.get("SAMLIVER_SLOW_TESTS") == "1" else 3


def test_vit_b_converts_every_key_and_encodes_the_same():
    hf = random_hf_sam("sam_vit_b", seed=1)
    spec = get_spec("sam_vit_b")
    ours = spec.builder(spec)
    converted = hf_to_sam_state_dict(hf.state_dict())
    expected = ours.sam.state_dict()
    assert converted.keys() == expected.keys()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}
    ours.load_weights(hf.state_dict())
    for k, v in ours.sam.state_dict().items():
        assert torch.equal(v, converted[k]), k

    hf.vision_encoder.layers = hf.vision_encoder.layers[:VIT_B_BLOCKS]
    ours.sam.image_encoder.blocks = ours.sam.image_encoder.blocks[:VIT_B_BLOCKS]
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf.get_image_embeddings(pixels)
        mine = ours.encode(pixels).image_embeddings
    assert mine.shape == (1, 256, 64, 64)
    assert mine.std() > 0.3
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_official_builder_matches_hf_config_for_the_tiny_model():
    """The SamConfig above describes samliver_tiny exactly: same keys, same shapes."""
    converted = hf_to_sam_state_dict(SamModel(hf_config("samliver_tiny")).state_dict())
    expected = build_sam_module(get_spec("samliver_tiny")).state_dict()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}


def test_unknown_key_is_named_as_stored_under_a_wrapper_prefix(tiny_pair):
    sd = {f"model.{k}": v for k, v in hf_state(tiny_pair[0]).items()}
    sd["model.mask_decoder.pred_obj_score_head.proj_in.weight"] = torch.zeros(2)
    sd["classifier.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"model\.mask_decoder\.pred_obj_score_head.*classifier\.weight"):
        hf_to_sam_state_dict(sd)


def test_hf_default_layer_norm_eps_differs_only_slightly(tiny_pair, tiny_embedding):
    """Published HF configs keep the decoder LayerNorm eps at 1e-6; the converted model (Meta's 1e-5)
    then differs from transformers' output by an eps-sized amount, not a mapping-sized one."""
    hf = random_hf_sam("samliver_tiny", decoder_eps=1e-6)
    ours, emb = tiny_pair[1], tiny_embedding[1][1:2]
    prompts = Prompts(**PROMPTS["box+points"])
    with torch.no_grad():
        theirs = hf(image_embeddings=emb, multimask_output=True, **hf_inputs(ours, prompts))
        out = ours.decode(ImageEmbedding(emb), prompts, IMAGE_SIZE, multimask=True)
    diff = (out.low_res_logits - theirs.pred_masks[0]).abs().max()
    assert 0 < diff < 1e-2
    torch.testing.assert_close(out.iou_scores, theirs.iou_scores[0], atol=1e-2, rtol=0)
