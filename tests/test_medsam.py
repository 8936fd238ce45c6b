"""MedSAM's convention, re-implemented here step by step on the upstream modules."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import transform

import samliver
from samliver.prompts import Prompts
from tests.conftest import ct_like_slice, randomize_


def test_medsam_vit_b_follows_medsams_own_inference_steps():
    model = randomize_(samliver.load_model("medsam_vit_b", checkpoint="random"), seed=5, std=0.02)
    assert model.spec.intensity == "medsam" and model.spec.window == (-160.0, 240.0)
    hu = ct_like_slice(90, 120, seed=6)
    box = np.array([[20.0, 15.0, 70.0, 60.0]])

    # MedSAM, by hand: window -> uint8, 3 channels, order-3 resize to 1024x1024 (uint8),
    # min-max to [0, 1], no mean/std; box scaled to 1024; logits upsampled bilinearly.
    lo, hi = -160.0, 240.0
    img = np.rint((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    img_3c = np.repeat(img[:, :, None], 3, axis=-1)
    img_1024 = transform.resize(img_3c, (1024, 1024), order=3, preserve_range=True,
                                anti_aliasing=True).astype(np.uint8)
    img_1024 = (img_1024 - img_1024.min()) / np.clip(img_1024.max() - img_1024.min(), 1e-8, None)
    pixels = torch.tensor(img_1024).float().permute(2, 0, 1)[None]

    ours = model.preprocess(hu)
    torch.testing.assert_close(ours, pixels, atol=1e-6, rtol=0)

    sam = model.sam
    with torch.no_grad():
        embedding = sam.image_encoder(pixels)
        box_1024 = torch.as_tensor(box / np.array([120, 90, 120, 90]) * 1024, dtype=torch.float)[:, None, :]
        sparse, dense = sam.prompt_encoder(points=None, boxes=box_1024, masks=None)
        low_res, iou = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=False)
        prob = torch.sigmoid(F.interpolate(low_res, size=(90, 120), mode="bilinear", align_corners=False))
    expected = (prob > 0.5).squeeze().numpy()

    from samliver.models.base import ImageEmbedding
    from samliver.inference import decode_objects
    got = decode_objects(model, ImageEmbedding(embedding), Prompts(boxes=box), (90, 120))
    np.testing.assert_array_equal(got.masks[0], expected)
    torch.testing.assert_close(torch.from_numpy(got.logits[0]),
                               F.interpolate(low_res, size=(90, 120), mode="bilinear", align_corners=False)[0, 0],
                               atol=1e-5, rtol=0)
    assert 0 < expected.mean() < 1
