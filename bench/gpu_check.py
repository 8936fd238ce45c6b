"""GPU check of the foundation: the Predictor on CUDA against the upstream SamPredictor and
against itself on the CPU, and volume inference time on a real CT.

    python -m bench.gpu_check --ct CT.nii.gz --label LIVER.nii.gz [--models sam_vit_b sam2.1_hiera_tiny]

Random weights (with seeded noise) stand in for checkpoints, so the numbers check
equivalence and speed, not accuracy. Prints one line per check and a final summary line.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import samliver
from samliver.models.base import window_to_rgb
from samliver.prompts import boxes_from_mask


def _noisy(model, seed: int = 0, std: float = 0.02):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p.device) * std)
    return model


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def check_model(name: str, ct, label: np.ndarray, device: str = "cuda") -> dict:
    torch.manual_seed(0)
    cpu = _noisy(samliver.load_model(name, checkpoint="random"))
    torch.manual_seed(0)
    gpu = _noisy(samliver.load_model(name, checkpoint="random")).to(device)
    z = int(np.argmax(label.reshape(label.shape[0], -1).sum(1)))
    prompts = boxes_from_mask(label[z] > 0)
    results = {}
    slice_preds = {}
    for dev, model in (("cpu", cpu), ("cuda", gpu)):
        pred = samliver.Predictor(model)
        pred.set_image(ct.array[z])
        slice_preds[dev] = pred.predict_prompts(prompts)
    diff = np.abs(slice_preds["cpu"].logits - slice_preds["cuda"].logits).max()
    agree = (slice_preds["cpu"].masks == slice_preds["cuda"].masks).mean()
    results["cpu_vs_cuda_max_abs_logit"] = float(diff)
    results["cpu_vs_cuda_mask_agreement"] = float(agree)
    print(f"{name}: slice {z}: CPU vs {device} max |logit diff| {diff:.2e}, mask agreement {agree:.6f}")

    from samliver.models.conventions import SamConvention

    if isinstance(gpu.convention, SamConvention):  # SamPredictor applies SAM's own convention
        from segment_anything import SamPredictor

        ref = SamPredictor(gpu.sam)
        ref.set_image(window_to_rgb(ct.array[z], gpu.spec.window))
        masks, _, _ = ref.predict(box=prompts.boxes[0], multimask_output=False, return_logits=True)
        d = np.abs(masks[0] - slice_preds["cuda"].logits[0]).max()
        results["vs_upstream_max_abs_logit"] = float(d)
        print(f"{name}: {device} vs segment_anything.SamPredictor max |logit diff| {d:.2e}")

    per_slice = {int(s): boxes_from_mask(label[s] > 0) for s in np.nonzero(label.reshape(label.shape[0], -1).any(1))[0]}
    pred = samliver.Predictor(gpu, batch_size=16)
    pred.segment_volume(ct, {k: per_slice[k] for k in list(per_slice)[:2]})  # warm-up
    pred = samliver.Predictor(gpu, batch_size=16)
    mask, secs = _timed(lambda: pred.segment_volume(ct, per_slice))
    results["segment_volume_s"] = secs
    print(f"{name}: segment_volume, {len(per_slice)} prompted slices of {ct.array.shape}: {secs:.2f} s")
    pred = samliver.Predictor(gpu, batch_size=16)
    _, psecs = _timed(lambda: pred.propagate_volume(ct, z, prompts))
    results["propagate_volume_s"] = psecs
    print(f"{name}: propagate_volume from slice {z}: {psecs:.2f} s")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--models", nargs="+", default=["sam_vit_b"])
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"torch {torch.__version__}, {name}")
    ct = samliver.load_ct(args.ct)
    label = samliver.load_label(args.label, like=ct)
    summary = {model: check_model(model, ct, label, args.device) for model in args.models}
    print("SUMMARY", summary)


if __name__ == "__main__":
    main()
