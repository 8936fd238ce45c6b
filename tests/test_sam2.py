"""SAM 2.1 / MedSAM2 on transformers, checked against Meta's own ``sam2`` package
(``SAM2ImagePredictor``, ``SAM2VideoPredictor``) with random weights on CPU."""

from __future__ import annotations

import dataclasses
import inspect
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import samliver  # noqa: E402
from samliver.errors import CheckpointError, PromptError  # noqa: E402
from samliver.models import load_model  # noqa: E402
from samliver.models.base import window_to_rgb  # noqa: E402
from samliver.models.convert_sam2 import (  # noqa: E402
    OFFICIAL_VIDEO_PREFIXES, official_to_hf_state_dict, split_video_state)
from samliver.models.sam2 import Sam2Segmenter, build_sam2_config  # noqa: E402
from samliver.models.sam2_video import build_video_config  # noqa: E402
from samliver.prompts import Prompts  # noqa: E402
from samliver.registry import get_spec  # noqa: E402
from tests.conftest import ct_like_slice, randomize_  # noqa: E402

pytest.importorskip("sam2")
pytest.importorskip("hydra")

YAMLS = {"sam2.1_hiera_tiny": "sam2.1_hiera_t", "sam2.1_hiera_small": "sam2.1_hiera_s",
         "sam2.1_hiera_base_plus": "sam2.1_hiera_b+", "sam2.1_hiera_large": "sam2.1_hiera_l",
         "medsam2": "sam2.1_hiera_t"}
# Meta's decoder settings of build_sam2 / build_sam2_video_predictor (apply_postprocessing), less
# the video predictor's CUDA-only hole filling (fill_hole_area), which transformers does not have.
META_DECODER = ["++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
                "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
                "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98"]


def _meta_overrides(size: int) -> list[str]:
    grid = size // 16
    return [f"++model.image_size={size}",
            f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
            f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]"]


def _compose(name: str, overrides: tuple[str, ...] = ()):
    from hydra import compose

    import sam2  # noqa: F401  (initialises hydra on sam2's config module)

    return compose(config_name=f"configs/sam2.1/{YAMLS[name]}.yaml", overrides=list(overrides))


# ---------------------------------------------------------------- registrations and conversion


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_registration_matches_metas_yaml(name):
    from sam2.modeling.backbones.hieradet import Hiera

    spec = get_spec(name)
    assert name in samliver.list_models()
    assert (spec.family, spec.intensity, spec.builder) == ("sam2", "sam2", Sam2Segmenter)
    assert spec.input_size == (512 if name == "medsam2" else 1024)
    cfg = _compose(name).model.image_encoder
    defaults = {k: v.default for k, v in inspect.signature(Hiera.__init__).parameters.items()}
    for key in ("embed_dim", "num_heads", "stages", "global_att_blocks", "window_spec",
                "window_pos_embed_bkg_spatial_size"):
        want = cfg.trunk.get(key, defaults[key])
        assert tuple(np.atleast_1d(spec.options[key])) == tuple(np.atleast_1d(want)), key
    assert tuple(spec.options["backbone_channel_list"]) == tuple(cfg.neck.backbone_channel_list)


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_conversion_covers_every_key_of_both_models(name):
    """Meta's full model (image + video parts) maps key-for-key, shape-for-shape onto
    transformers' Sam2VideoModel, and its image part exactly onto Sam2Model."""
    from accelerate import init_empty_weights
    from hydra.utils import instantiate
    from transformers import Sam2Model, Sam2VideoModel

    spec = get_spec(name)
    with init_empty_weights():  # parameters on the meta device: shapes only, no memory, fast
        meta = instantiate(_compose(name, tuple(_meta_overrides(spec.input_size))).model, _recursive_=True)
        image_model = Sam2Model(build_sam2_config(spec))
        video_model = Sam2VideoModel(build_video_config(spec))
    official = meta.state_dict()
    converted = official_to_hf_state_dict(official)
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    assert shapes == {k: tuple(v.shape) for k, v in video_model.state_dict().items()}
    image, video = split_video_state(converted)
    assert {k: shapes[k] for k in image} == {k: tuple(v.shape) for k, v in image_model.state_dict().items()}
    assert video and all(k not in image_model.state_dict() for k in video)
    # the video-only parts, listed by prefix under both namings, are the same tensors
    official_video = {k: v for k, v in official.items() if k.startswith(OFFICIAL_VIDEO_PREFIXES)}
    assert official_to_hf_state_dict(official_video).keys() == video.keys()


def test_wrong_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "sam_vit.pth"
    torch.save(load_model("samliver_tiny", checkpoint="random").sam.state_dict(), path)
    with pytest.raises(CheckpointError, match="sam2.1_hiera_tiny") as err:
        load_model("sam2.1_hiera_tiny", checkpoint=path)
    assert "missing keys" in str(err.value) and "unexpected keys" in str(err.value)
    assert "image_encoder." in str(err.value)


def test_encode_and_decode_keep_gradients():
    spec = dataclasses.replace(get_spec("sam2.1_hiera_tiny"), input_size=128)  # small, for speed
    model = randomize_(Sam2Segmenter(spec), seed=3)
    emb = model.encode(model.preprocess(ct_like_slice(64, 80)))
    out = model.decode(emb, Prompts(boxes=[[10, 10, 50, 40]]), (64, 80))
    assert out.low_res_logits.shape == (1, 1, 32, 32)
    out.low_res_logits.mean().backward()
    assert model.sam2.vision_encoder.backbone.patch_embed.projection.weight.grad is not None
    assert model.sam2.no_memory_embedding.grad is not None


# ---------------------------------------------------------------- image: Meta's SAM2ImagePredictor

H, W = 200, 240  # non-square on purpose


@pytest.fixture(scope="module")
def image_pair(tmp_path_factory):
    """Meta's SAM 2.1-T (random weights) with the image set, and ours loaded from the same checkpoint."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    torch.manual_seed(0)
    meta = randomize_(build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu"), seed=1)
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_random.pt"
    torch.save({"model": meta.state_dict()}, path)
    ours = load_model("sam2.1_hiera_tiny", checkpoint=path)
    assert ours.video_state is not None  # the memory weights were kept for propagation

    hu = ct_like_slice(H, W, seed=2)
    predictor = SAM2ImagePredictor(meta)
    predictor.set_image(window_to_rgb(hu, ours.spec.window))
    pixels = ours.preprocess(hu)
    # Sam2Convention.to_pixels is exactly Meta's SAM2Transforms (ToTensor, Resize S x S, Normalize).
    assert torch.equal(pixels, predictor._transforms(window_to_rgb(hu, ours.spec.window))[None])
    with torch.no_grad():
        emb = ours.encode(pixels)
    # set_image adds no_mem_embed to the coarsest level; so does our encode.
    torch.testing.assert_close(emb.image_embeddings, predictor._features["image_embed"], atol=1e-4, rtol=0)
    for a, b in zip(emb.high_res_features, predictor._features["high_res_feats"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    return predictor, ours, emb


BOX = [[50.0, 40.0, 180.0, 150.0]]
BOXES = [[50.0, 40.0, 180.0, 150.0], [10.0, 120.0, 90.0, 190.0]]
CASES = {
    "box": dict(box=BOX),
    "one_click": dict(points=[[[100.0, 90.0]]], point_labels=[[1]]),
    "three_clicks": dict(points=[[[100.0, 90.0], [30.0, 30.0], [150.0, 120.0]]], point_labels=[[1, 0, 1]]),
    "box_and_negative_click": dict(box=BOX, points=[[[60.0, 50.0]]], point_labels=[[0]]),
    "two_boxes": dict(box=BOXES),
    "click_and_mask": dict(points=[[[100.0, 90.0]]], point_labels=[[1]], mask_from=BOX),
    "mask_only": dict(mask_from=BOX),
    "two_boxes_and_masks": dict(box=BOXES, mask_from=BOXES),
}


@pytest.mark.parametrize(("case", "multimask"), [
    ("box", False), ("box", True), ("one_click", False), ("one_click", True), ("three_clicks", False),
    ("box_and_negative_click", False), ("two_boxes", True), ("click_and_mask", False), ("mask_only", True),
    ("two_boxes_and_masks", False)])
def test_image_path_matches_sam2_image_predictor(image_pair, case, multimask):
    predictor, ours, emb = image_pair
    c = CASES[case]
    mask_input = None
    if "mask_from" in c:  # a previous low-res prediction fed back, as interactive tools do
        _, _, mask_input = predictor.predict(box=np.array(c["mask_from"]), multimask_output=False)
        mask_input = mask_input.reshape(len(c["mask_from"]), 1, *mask_input.shape[-2:])
    box = None if "box" not in c else np.array(c["box"], np.float32)
    points = None if "points" not in c else np.array(c["points"], np.float32)
    labels = None if "points" not in c else np.array(c["point_labels"])
    ref_masks, ref_scores, ref_low = predictor.predict(point_coords=points, point_labels=labels, box=box,
                                                       mask_input=mask_input, multimask_output=multimask)
    prompts = Prompts(boxes=box, points=points, point_labels=labels, masks=mask_input)
    n, m = len(prompts), (3 if multimask else 1)
    with torch.no_grad():
        out = ours.decode(emb, prompts, (H, W), multimask=multimask)
        masks = ours.postprocess(out.low_res_logits, (H, W)) > ours.mask_threshold
    assert out.low_res_logits.shape == (n, m, 256, 256) and out.iou_scores.shape == (n, m)
    ref_low = torch.as_tensor(ref_low).reshape(n, m, 256, 256)
    # Meta's predictor returns its low-res logits clamped to [-32, 32].
    torch.testing.assert_close(out.low_res_logits.clamp(-32, 32), ref_low, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.iou_scores, torch.as_tensor(ref_scores).reshape(n, m), atol=1e-4, rtol=0)
    ref_masks = torch.as_tensor(ref_masks).reshape(n, m, H, W)
    assert (masks == ref_masks).float().mean() >= 0.999


def test_decode_appends_sparse_tokens(image_pair):
    _, ours, emb = image_pair
    tokens = torch.randn(2, 3, 256).numpy()
    with torch.no_grad():
        plain = ours.decode(emb, Prompts(boxes=BOXES), (H, W))
        with_tokens = ours.decode(emb, Prompts(boxes=BOXES, tokens=tokens), (H, W))
        only_tokens = ours.decode(emb, Prompts(tokens=tokens), (H, W), multimask=True)
    assert with_tokens.low_res_logits.shape == (2, 1, 256, 256)
    assert only_tokens.low_res_logits.shape == (2, 3, 256, 256)
    assert not torch.allclose(plain.low_res_logits, with_tokens.low_res_logits)
    with pytest.raises(PromptError, match="256, 256"):  # mask inputs must be at the low-res size
        ours.decode(emb, Prompts(masks=np.zeros((1, 1, 64, 64), np.float32)), (H, W))


def test_hugging_face_state_dict_round_trip(image_pair):
    _, ours, _ = image_pair
    state = {**ours.sam2.state_dict(), **ours.video_state}  # what a Sam2VideoModel checkpoint holds
    other = Sam2Segmenter(get_spec("sam2.1_hiera_tiny"))
    other.load_weights(state)
    for key, value in ours.sam2.state_dict().items():
        assert torch.equal(other.sam2.state_dict()[key], value), key
    assert other.video_state.keys() == ours.video_state.keys()


# ---------------------------------------------------------------- 3D: Meta's SAM2VideoPredictor

Z, VH, VW, KEY = 4, 96, 96, 1
VIDEO_SIZE = 256


def _disc_volume() -> np.ndarray:
    """``(Z, 96, 96)`` HU: soft tissue with a bright disc that shifts 4 px per slice."""
    yy, xx = np.mgrid[:VH, :VW]
    vol = np.full((Z, VH, VW), -80.0, np.float32)
    for z in range(Z):
        vol[z][(yy - 48) ** 2 + (xx - 36 - 4 * z) ** 2 < 18 ** 2] = 150.0
    return vol + np.random.default_rng(4).normal(0, 10, vol.shape).astype(np.float32)


@pytest.fixture(scope="module")
def video_pair(tmp_path_factory):
    """Meta's video predictor and our medsam2 (Hiera-T), random weights from one official
    checkpoint, both at a 256-pixel input (MedSAM2 uses 512; 256 keeps the test fast on CPU).
    The object-score head's bias is raised so that random weights see the objects on the
    key slice (otherwise both sides blank them)."""
    from sam2.build_sam import build_sam2_video_predictor

    from samliver.models.checkpoints import read_state_dict

    torch.manual_seed(0)
    overrides = _meta_overrides(VIDEO_SIZE) + META_DECODER + ["++model.binarize_mask_from_pts_for_mem_enc=true"]
    meta = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                                      hydra_overrides_extra=overrides, apply_postprocessing=False)
    randomize_(meta, seed=7)
    with torch.no_grad():
        meta.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(8.0)
    folder = tmp_path_factory.mktemp("medsam2")
    torch.save({"model": meta.state_dict()}, folder / "medsam2_random.pt")
    ours = Sam2Segmenter(dataclasses.replace(get_spec("medsam2"), input_size=VIDEO_SIZE))
    ours.load_weights(read_state_dict(folder / "medsam2_random.pt"))
    return meta, ours.eval(), folder


# Object 1 (label 1): a box around the disc; object 2 (label 2): a smaller box inside it (overlap).
VIDEO_PROMPTS = Prompts(boxes=[[16.0, 28.0, 60.0, 68.0], [30.0, 40.0, 48.0, 58.0]], labels=np.array([1, 2], np.uint8))


def test_propagate_matches_sam2_video_predictor(video_pair):
    from PIL import Image

    meta, ours, folder = video_pair
    vol = _disc_volume()
    result = ours.propagate(vol, KEY, VIDEO_PROMPTS)
    assert result.shape == (Z, VH, VW) and result.dtype == np.uint8
    assert set(np.unique(result)) <= {0, 1, 2} and (result[KEY] == 2).any()

    # The key slice is the image model's decode: same weights, same convention, same prompts.
    with torch.no_grad():
        emb = ours.encode(ours.preprocess(vol[KEY]))
        logits = ours.postprocess(ours.decode(emb, VIDEO_PROMPTS, (VH, VW)).low_res_logits, (VH, VW))[:, 0]
    key = np.zeros((VH, VW), np.uint8)
    for mask, label in zip(logits.numpy() > 0, VIDEO_PROMPTS.labels):
        key = np.maximum(key, np.where(mask, label, 0).astype(np.uint8))
    assert np.array_equal(result[KEY], key)

    # Meta's SAM2VideoPredictor on the same frames: its init_state wants a folder of JPEGs,
    # so the frames are written for it, then replaced by exactly our preprocessed pixels.
    frames = folder / "frames"
    frames.mkdir(exist_ok=True)
    for z in range(Z):
        Image.fromarray(window_to_rgb(vol[z], ours.spec.window)).save(frames / f"{z:05d}.jpg")
    with torch.inference_mode():
        state = meta.init_state(str(frames))
        state["images"] = torch.cat([ours.preprocess(vol[z]) for z in range(Z)])
        state["cached_features"] = {}
        for obj_id, box in zip(VIDEO_PROMPTS.labels, VIDEO_PROMPTS.boxes):
            meta.add_new_points_or_box(state, frame_idx=KEY, obj_id=int(obj_id), box=box)
        ref = np.zeros_like(result)
        for reverse in (False, True):
            for z, obj_ids, video_logits in meta.propagate_in_video(state, start_frame_idx=KEY, reverse=reverse):
                for obj_id, lg in zip(obj_ids, video_logits):
                    ref[z] = np.maximum(ref[z], np.where((lg[0] > 0).numpy(), obj_id, 0).astype(np.uint8))
    assert np.array_equal(ref[KEY], result[KEY])
    agreement = (ref == result).mean(axis=(1, 2))
    assert agreement.min() >= 0.999, agreement
    assert [(ref[z] > 0).any() for z in range(Z)] == [(result[z] > 0).any() for z in range(Z)]


def test_propagate_rejects_text_tokens(video_pair):
    _, ours, _ = video_pair
    with pytest.raises(PromptError, match="tokens"):
        ours.propagate(_disc_volume(), KEY, Prompts(tokens=np.zeros((1, 2, 256), np.float32)))


def test_propagate_from_a_mask_prompt(video_pair):
    """A mask input is taken as the key slice's answer (SAM 2's add_new_mask), then tracked."""
    import torch.nn.functional as F

    _, ours, _ = video_pair
    vol = _disc_volume()[:2]
    yy, xx = np.mgrid[:VH, :VW]
    disc = ((yy - 48) ** 2 + (xx - 36) ** 2 < 18 ** 2).astype(np.float32)
    low = F.interpolate(torch.from_numpy(disc)[None, None], (ours.low_res_size,) * 2, mode="bilinear")
    result = ours.propagate(vol, 0, Prompts(masks=(low.numpy() - 0.5) * 20, labels=np.array([3], np.uint8)))
    assert result.shape == (2, VH, VW) and set(np.unique(result)) <= {0, 3}
    key = result[0] > 0
    assert (key & (disc > 0)).sum() / (key | (disc > 0)).sum() > 0.9


def test_propagate_needs_every_memory_weight_of_a_checkpoint(video_pair):
    _, ours, _ = video_pair
    other = Sam2Segmenter(ours.spec)
    state = {**ours.sam2.state_dict(), **ours.video_state}
    del state["no_object_pointer"]
    other.load_weights(state)  # the image model is complete
    with pytest.raises(CheckpointError, match="no_object_pointer"):
        other.propagate(_disc_volume()[:2], 0, VIDEO_PROMPTS)
