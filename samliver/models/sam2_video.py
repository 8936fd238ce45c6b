"""3D propagation for SAM 2 models with transformers' ``Sam2VideoModel``: the CT's axial
slices are the video frames, the key slice holds the prompts, and SAM 2's memory carries the
objects forward and backward through the volume.

Slices stay in memory (no JPEG folder): the inference session's frames are a lazy mapping
that preprocesses slice ``z`` with the image model's own convention (`preprocess`) when the
video model asks for it, so a long volume never holds all frames at model resolution.
The video model is built from the same config as the image model; before each run it is
loaded with the image model's current weights plus the checkpoint's memory weights
(``Sam2Segmenter.video_state``; random if no official checkpoint was loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from samliver.errors import PromptError
from samliver.prompts import Prompts
from samliver.registry import ModelSpec

from .checkpoints import load_state_strict
from .convert_sam2 import HF_VIDEO_PREFIXES
from .sam2 import _sub_configs

if TYPE_CHECKING:
    from transformers import Sam2VideoModel

    from .sam2 import Sam2Segmenter


def build_video_config(spec: ModelSpec):
    """The transformers ``Sam2VideoConfig`` matching `build_sam2_config` for ``spec``.

    Memory settings are transformers' defaults, which equal Meta's ``sam2.1_hiera_*.yaml``
    (7 memories, 16 object pointers, sigmoid scale 20 / bias -10, occlusion embedding, ...);
    the memory attention's RoPE grid is the coarsest feature map, ``S/16 x S/16``.
    """
    from transformers import Sam2VideoConfig

    sub = _sub_configs(spec)
    grid = spec.input_size // 16
    return Sam2VideoConfig(vision_config=sub["vision_config"],
                           prompt_encoder_config=sub["prompt_encoder_config"].to_dict(),
                           mask_decoder_config=sub["mask_decoder_config"].to_dict(),
                           image_size=spec.input_size, memory_attention_rope_feat_sizes=[grid, grid])


def video_model(segmenter: "Sam2Segmenter") -> "Sam2VideoModel":
    """``segmenter``'s ``Sam2VideoModel`` (built once, cached outside the module tree),
    loaded with the image model's current weights and the memory weights, in eval mode.

    Raises:
        CheckpointError: the image model's or the memory weights do not fit the video model
            (e.g. adapter-injected modules that change the state-dict keys).
    """
    from transformers import Sam2VideoModel

    video = segmenter.__dict__.get("_video_model")
    if video is None:
        video = Sam2VideoModel(build_video_config(segmenter.spec))
        segmenter.__dict__["_video_model"] = video  # not a submodule: stays out of state_dict()
    if segmenter.video_state is not None:  # a checkpoint's memory weights: all of them, strictly
        memory = segmenter.video_state
    else:  # random weights: the video model's own initialisation
        memory = {k: v for k, v in video.state_dict().items() if k.startswith(HF_VIDEO_PREFIXES)}
    load_state_strict(video, {**segmenter.sam2.state_dict(), **memory}, f"{segmenter.spec.name} (video)")
    return video.to(segmenter.device).eval()


class _SliceFrames(Mapping):
    """Frames of the inference session: ``frames[z]`` = model pixels ``(3, S, S)`` of slice ``z``."""

    def __init__(self, segmenter: "Sam2Segmenter", hu_volume: np.ndarray, window: tuple[float, float] | None):
        self.segmenter, self.hu_volume, self.window = segmenter, hu_volume, window

    def __getitem__(self, z: int) -> torch.Tensor:
        return self.segmenter.preprocess(self.hu_volume[z], self.window)[0]

    def __len__(self) -> int:
        return int(self.hu_volume.shape[0])

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))


def _add_prompts(segmenter: "Sam2Segmenter", session, key_slice: int, prompts: Prompts,
                 image_size: tuple[int, int]) -> None:
    """Object ``i`` of ``prompts`` becomes session object id ``i`` on ``key_slice``: box corners
    (labels 2, 3) then clicks, as Meta's ``add_new_points_or_box``; or a binary mask."""
    device = segmenter.device
    points = segmenter.point_inputs(prompts, image_size, device)  # (N, 1, K, 2), (N, 1, K)
    masks = None
    if prompts.masks is not None:
        size = segmenter.input_size
        binary = torch.as_tensor(prompts.masks, device=device) > segmenter.mask_threshold
        masks = F.interpolate(binary.float(), (size, size), mode="bilinear", align_corners=False) >= 0.5
    for i in range(len(prompts)):
        obj_idx = session.obj_id_to_idx(i)
        if points is not None:
            session.add_point_inputs(obj_idx, key_slice, {"point_coords": points[0][i:i + 1],
                                                          "point_labels": points[1][i:i + 1]})
        else:
            session.add_mask_inputs(obj_idx, key_slice, masks[i:i + 1].float())
    session.obj_with_new_inputs = list(range(len(prompts)))


def propagate_video(segmenter: "Sam2Segmenter", hu_volume: np.ndarray, key_slice: int, prompts: Prompts,
                    window: tuple[float, float] | None = None) -> np.ndarray:
    """Segment ``hu_volume`` ``(Z, H, W)`` HU from the N objects prompted on ``key_slice``.

    Each object is prompted with its box and/or clicks, or (without those) with its mask
    input (``prompts.masks`` logits > 0, used as given, as SAM 2's ``add_new_mask``). The
    key slice is decoded without memory, then the video model tracks forward to the last
    slice and backward to the first.

    Returns:
        ``(Z, H, W)`` uint8 with each object's label (``prompts.labels``; higher wins on overlap).

    Raises:
        PromptError: ``key_slice`` outside the volume, prompts outside the slice, text
            tokens (the video model has no place for them), or a mask together with a box/clicks.
    """
    from transformers import Sam2VideoInferenceSession

    from samliver.inference import paint

    hu_volume = np.asarray(hu_volume)
    if hu_volume.ndim != 3:
        raise ValueError(f"propagate: expected an HU volume (Z, H, W), got shape {hu_volume.shape}")
    depth, height, width = hu_volume.shape
    if not 0 <= key_slice < depth:
        raise PromptError(f"key_slice: {key_slice} outside the volume's {depth} slices")
    prompts = prompts.check_inside(height, width)
    if prompts.tokens is not None:
        raise PromptError("prompts: SAM 2 propagation takes boxes, points or masks; text tokens are not supported")
    if prompts.masks is not None and (prompts.boxes is not None or prompts.points is not None):
        raise PromptError("prompts: SAM 2 propagation takes a box/points or a mask per object, not both")

    video = video_model(segmenter)
    device = segmenter.device
    session = Sam2VideoInferenceSession(video_height=height, video_width=width, inference_device=device,
                                        inference_state_device=device, video_storage_device=device,
                                        dtype=torch.float32)
    session.processed_frames = _SliceFrames(segmenter, hu_volume, window)
    _add_prompts(segmenter, session, key_slice, prompts, (height, width))

    out = np.zeros((depth, height, width), np.uint8)
    with torch.inference_mode():
        for reverse in (False, True):
            for step in video.propagate_in_video_iterator(session, start_frame_idx=key_slice, reverse=reverse):
                logits = segmenter.postprocess(step.pred_masks.float(), (height, width))[:, 0]  # (N, H, W)
                paint(out[step.frame_idx], (logits > segmenter.mask_threshold).cpu().numpy(), prompts.labels)
    return out
