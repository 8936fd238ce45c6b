"""``samliver segment CT --model NAME (--box ... | --prompts-file F) [--propagate] -o mask.nii.gz``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from samliver.errors import PromptError, SamliverError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment a CT (NIfTI file or DICOM folder) from prompts",
                              description="Segment a CT from box/point prompts; writes a label map on the CT's own grid.")
    p.add_argument("ct", help="CT: .nii/.nii.gz file or a DICOM series folder")
    p.add_argument("--model", required=True, help="model name (see `samliver weights list`)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the model's file in the weights folders)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--box", action="append", metavar="Z,X0,Y0,X1,Y1",
                     help="a box on slice Z in canonical slice pixels; repeat for more objects")
    src.add_argument("--prompts-file", metavar="JSON", help='prompts file: {"objects": [{"slice":..., "box":...}]}')
    p.add_argument("--label", action="append", type=int, metavar="N",
                   help="label of the --box objects: once for all, or once per --box (default 1)")
    p.add_argument("--propagate", action="store_true",
                   help="3D: propagate each prompted object from its slice through the volume")
    p.add_argument("--window", metavar="LO,HI", help="CT window in HU (default: the model's, W400/L40)")
    p.add_argument("--series-uid", help="SeriesInstanceUID to pick in a multi-series DICOM folder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("-o", "--output", required=True, help="output mask (.nii or .nii.gz)")
    p.set_defaults(func=run)


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise PromptError(f"{what}: expected {count} comma-separated numbers, got {text!r}")
    return values


def box_objects(boxes: list[str], labels: list[int] | None) -> list[dict]:
    """``--box`` / ``--label`` arguments -> prompts-file objects."""
    if labels and len(labels) not in (1, len(boxes)):
        raise PromptError(f"--label: give it once or once per --box ({len(boxes)}), got {len(labels)}")
    objects = []
    for i, text in enumerate(boxes):
        z, *box = _numbers(text, 5, "--box")
        if z != int(z):
            raise PromptError(f"--box: slice index must be an integer, got {text!r}")
        label = labels[0] if labels and len(labels) == 1 else (labels[i] if labels else 1)
        objects.append({"slice": int(z), "box": box, "label": label})
    return objects


def run(args: argparse.Namespace) -> int:
    import samliver
    from samliver.prompts import group_objects, read_prompts_file

    output = Path(args.output)
    if not output.name.endswith((".nii", ".nii.gz")):
        raise SamliverError(f"{output}: output must end in .nii or .nii.gz")
    window = tuple(_numbers(args.window, 2, "--window")) if args.window else None
    if args.box:
        prompts = group_objects(box_objects(args.box, args.label), where="--box")
    else:
        if args.label:
            raise PromptError("--label: applies to --box; put labels in the prompts file instead")
        prompts = read_prompts_file(args.prompts_file)
    ct = samliver.load_ct(args.ct, series_uid=args.series_uid)
    depth, height, width = ct.array.shape
    for z, groups in prompts.items():
        if z >= depth:
            raise PromptError(f"slice {z}: outside {args.ct}'s {depth} slices")
        for group in groups:
            group.check_inside(height, width)
    model = samliver.load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    predictor = samliver.Predictor(model)
    if args.propagate:
        mask = np.zeros(ct.array.shape, np.uint8)
        for z, groups in prompts.items():
            for group in groups:
                np.maximum(mask, predictor.propagate_volume(ct, z, group, window=window), out=mask)
    else:
        mask = predictor.segment_volume(ct, prompts, window=window)
    samliver.save_mask(mask, like=ct, path=output)
    counts = ", ".join(f"label {v}: {n} voxels" for v, n in zip(*np.unique(mask[mask > 0], return_counts=True)))
    print(f"wrote {output} ({counts or 'empty mask'})")
    return 0
