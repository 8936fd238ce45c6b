"""``samliver segment CT --model NAME (--box ... | --prompts-file F | --auto | --text T) [--propagate] -o mask.nii.gz``.

``--text "liver tumor"`` (an adapter with a trained text projection) prompts every slice, or those
``--slices`` names, with one object per text; each is written with ``--label`` or, by default, the
label of the class the text describes (1 liver, 2 tumour; 1 for other texts)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from samliver.errors import PromptError, SamliverError
from samliver.io.hu import check_hu

from .segment_batch import is_batch_input, run_batch


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("segment", help="segment a CT (NIfTI file or DICOM folder) from prompts",
                              description="Segment a CT from box/point prompts; writes a label map on the CT's own grid.")
    p.add_argument("ct", help="CT: .nii/.nii.gz file or a DICOM series folder; or a folder of NIfTI files and/or "
                              "DICOM series subfolders, segmented one by one into the folder -o")
    p.add_argument("--model", required=True, help="model name (see `samliver weights list`)")
    p.add_argument("--checkpoint", help="checkpoint file (default: the model's file in the weights folders)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--box", action="append", metavar="Z,X0,Y0,X1,Y1",
                     help="a box on slice Z in canonical slice pixels; repeat for more objects")
    src.add_argument("--prompts-file", metavar="JSON", help='prompts file: {"objects": [{"slice":..., "box":...}]}')
    src.add_argument("--auto", action="store_true",
                     help="fully automatic: boxes from the model's default box generator (samliver_tiny: the "
                          "bundled U-Net) or --box-generator, refined by the model; 1 liver, 2 tumour")
    src.add_argument("--text", action="append", metavar="DESCRIPTION",
                     help='a class description, e.g. "liver tumor", decoded on every slice (or --slices) through '
                          "the --adapter's trained text projection; repeat for more objects")
    p.add_argument("--slices", metavar="A-B|A,B,...",
                   help="--text: the slices to prompt (default: all; a text carries no location)")
    p.add_argument("--box-generator", metavar="PATH",
                   help="--auto: a saved U-Net box generator instead of the model's default")
    p.add_argument("--no-cleanup", action="store_true",
                   help="--auto: skip the 3D cleanup (largest liver component, holes filled)")
    p.add_argument("--adapter", metavar="DIR",
                   help="a saved adapter folder to apply to the model; with --auto the model's bundled default "
                        "(samliver_tiny: its liver-tumour LoRA adapter) unless 'none' or --checkpoint is given")
    p.add_argument("--label", action="append", type=int, metavar="N",
                   help="label of the --box objects: once for all, or once per --box (default 1)")
    p.add_argument("--propagate", action="store_true",
                   help="3D: propagate each prompted object from its slice through the volume")
    p.add_argument("--window", metavar="LO,HI", help="CT window in HU (default: the model's, W400/L40)")
    p.add_argument("--series-uid", help="SeriesInstanceUID to pick in a multi-series DICOM folder")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--strict", action="store_true",
                   help="folder of CTs: stop at the first CT that cannot be segmented (exit 2) instead of "
                        "skipping and listing it (exit 1)")
    p.add_argument("--force", action="store_true",
                   help="folder of CTs: write into an output folder that holds another run's masks (replaced)")
    p.add_argument("-o", "--output", required=True,
                   help="output mask: .nii or .nii.gz, or .dcm (DICOM SEG; needs a DICOM series input)")
    p.set_defaults(func=run)


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != count:
        raise PromptError(f"{what}: expected {count} comma-separated numbers, got {text!r}")
    return values


def parse_window(text: str) -> tuple[float, float]:
    """``--window LO,HI`` -> ``(lo, hi)`` HU, finite with LO < HI."""
    lo, hi = _numbers(text, 2, "--window")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise SamliverError(f"--window: expected LO,HI in HU with LO < HI, got {text!r}")
    return lo, hi


def parse_slices(text: str | None, depth: int) -> list[int]:
    """``--slices`` ("all", "A-B" inclusive, or "A,B,C") -> slice indices inside ``depth`` slices."""
    if text is None or text.strip().lower() == "all":
        return list(range(depth))
    try:
        if "-" in text:
            first, last = (int(v) for v in text.split("-"))
            zs = list(range(first, last + 1))
        else:
            zs = sorted({int(v) for v in text.split(",")})
    except ValueError:
        zs = []
    if not zs or min(zs) < 0 or max(zs) >= depth:
        raise PromptError(f"--slices: expected 'all', A-B or A,B,... within the CT's {depth} slices, got {text!r}")
    return zs


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


def load_box_generator(path: str, device: str | None = None):
    """A saved U-Net box generator (`samliver.prompts.unet_boxes`) on ``device`` (None: the CPU), imported only
    when asked for."""
    try:
        from samliver.prompts.unet_boxes import load_box_generator as load
    except ImportError as exc:
        raise SamliverError(f"--box-generator {path}: U-Net box generators are unavailable ({exc})") from None
    return load(path, device=device or "cpu")


def load_segment_model(args: argparse.Namespace):
    """The model ``args`` ask for (loaded once for a whole folder of CTs)."""
    import samliver

    adapter = args.adapter
    if adapter is None and args.auto:
        from samliver.prompts.generators import default_adapter

        default = default_adapter(args.model)
        if default is not None and args.checkpoint is None:    # the default adapter fits the default base
            adapter = default
            print(f"--auto: applying {args.model}'s default adapter {adapter} (--adapter none: the bare model)")
        elif default is not None:
            print(f"--auto: {args.model}'s default adapter fits its bundled weights, not --checkpoint, so it is "
                  "not applied; --adapter DIR applies one")
    if adapter is not None and str(adapter).lower() == "none":
        adapter = None
    return samliver.load_model(args.model, checkpoint=args.checkpoint, adapter=adapter, device=args.device)


def run(args: argparse.Namespace, model=None) -> int:
    """Segment one CT (``model``: an already loaded model, else `load_segment_model`); a folder of CTs
    goes to `segment_batch.run_batch`."""
    import samliver
    from samliver.prompts import group_objects, read_prompts_file

    if is_batch_input(args.ct):
        return run_batch(args, run, load_segment_model)
    output = Path(args.output)
    if not output.name.lower().endswith((".nii", ".nii.gz", ".dcm")):
        raise SamliverError(f"{output}: output must end in .nii, .nii.gz or .dcm (DICOM SEG)")
    window = parse_window(args.window) if args.window else None
    if not args.auto and (args.box_generator or args.no_cleanup):
        raise PromptError("--box-generator and --no-cleanup apply to --auto")
    if getattr(args, "slices", None) and not getattr(args, "text", None):
        raise PromptError("--slices applies to --text")
    if getattr(args, "text", None):
        if args.propagate:
            raise PromptError("--propagate applies to box/point prompts, not to --text")
        prompts = {}  # built once the model (its text projection) and the CT's depth are known
    elif args.box:
        prompts = group_objects(box_objects(args.box, args.label), where="--box")
    elif args.auto:
        if args.label or args.propagate:
            raise PromptError("--label and --propagate apply to given prompts, not to --auto")
        prompts = {}
    else:
        if args.label:
            raise PromptError("--label: applies to --box; put labels in the prompts file instead")
        prompts = read_prompts_file(args.prompts_file)
    ct = samliver.load_ct(args.ct, series_uid=args.series_uid)
    check_hu(ct.array, args.ct)
    depth, height, width = ct.array.shape
    text_slices = parse_slices(args.slices, depth) if getattr(args, "text", None) else None
    for z, groups in prompts.items():
        if z >= depth:
            raise PromptError(f"slice {z}: outside {args.ct}'s {depth} slices")
        for group in groups:
            group.check_inside(height, width)
    model = model if model is not None else load_segment_model(args)
    if getattr(args, "text", None):
        from samliver.prompts.clip_text import text_slice_prompts

        prompts = text_slice_prompts(model, args.text, text_slices, args.label)
    predictor = samliver.Predictor(model)
    if args.auto:
        generator = load_box_generator(args.box_generator, args.device) if args.box_generator else None
        mask = predictor.segment_auto(ct, generator, cleanup=not args.no_cleanup, window=window)
    elif args.propagate:
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
