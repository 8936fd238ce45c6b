"""``samliver synth phantom --n N -o DIR`` and ``samliver synth tumors CT LIVERMASK -o DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("synth", help="make synthetic data (phantoms, tumours in real livers)",
                                   description="Make synthetic data: phantom CTs, or tumours inserted into a real liver.")
    sub = parser.add_subparsers(dest="synth_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("phantom", help="synthetic abdominal CT phantoms (images/ + labels/ dataset)",
                       description="Write N synthetic abdominal CTs with liver/tumour labels as an "
                                   "images/ + labels/ dataset that `samliver data info` and training read.")
    p.add_argument("--n", type=int, default=8, help="number of cases (default 8)")
    p.add_argument("--preset", default="liver-tumor", help="phantom preset (configs/phantom/*.yaml)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    p.add_argument("-o", "--output-dir", required=True, help="dataset folder to create")
    p.set_defaults(func=run_phantom)
    t = sub.add_parser("tumors", help="insert synthetic tumours into a real CT's liver",
                       description="Insert synthetic liver tumours (Hu et al. 2023 heuristics); writes "
                                   "image.nii.gz and label.nii.gz (0/1/2) on the CT's own grid.")
    t.add_argument("ct", help="CT: .nii/.nii.gz file or DICOM series folder")
    t.add_argument("liver_mask", help="liver mask or label map on the CT's grid (values > 0 are liver)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--count", metavar="LO,HI", help="number of tumours, e.g. 1,3")
    t.add_argument("-o", "--output-dir", required=True, help="folder for image.nii.gz and label.nii.gz")
    t.set_defaults(func=run_tumors)
    return parser


def _pair(text: str, what: str) -> tuple[int, int]:
    from samliver.errors import SamliverError

    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise SamliverError(f"{what}: expected two comma-separated integers, got {text!r}") from None
    return lo, hi


def run_phantom(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from samliver.data import PHANTOM_VERSION, load_phantom_preset, make_phantom
    from samliver.errors import SamliverError
    from samliver.io import save_image, save_mask

    if args.n < 1:
        raise SamliverError(f"--n: need at least one case, got {args.n}")
    try:
        load_phantom_preset(args.preset)
    except ValueError as exc:
        raise SamliverError(str(exc)) from None
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        raise SamliverError(f"{out}: folder exists and is not empty")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    names = []
    for i in tqdm(range(args.n), desc="phantoms", unit="case"):
        case = make_phantom(args.seed + i, preset=args.preset)
        save_image(case.image, out / "images" / f"{case.name}.nii.gz")
        save_mask(case.label, like=case.image, path=out / "labels" / f"{case.name}.nii.gz")
        names.append(case.name)
    record = {"generator": "samliver.data.make_phantom", "phantom_version": PHANTOM_VERSION,
              "preset": args.preset, "seeds": [args.seed + i for i in range(args.n)], "cases": names}
    (out / "phantom.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.n} phantom cases to {out}")
    return 0


def run_tumors(args: argparse.Namespace) -> int:
    from samliver.data import synthesize_tumors_files

    options = {"count": _pair(args.count, "--count")} if args.count else {}
    image, label = synthesize_tumors_files(args.ct, args.liver_mask, Path(args.output_dir), seed=args.seed, **options)
    print(f"wrote {image} and {label}")
    return 0
