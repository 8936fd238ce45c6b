"""``samliver data info FOLDER``: what a dataset holds, and which cases cannot be read.

``data`` has sub-commands; each registers itself with a function in `SUBCOMMANDS`
(``prepare`` joins here).
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from samliver.data.datasets import Dataset, load_dataset
from samliver.errors import DatasetError, OutputFolderError, SamliverError
from samliver.provenance import make_record, missing_root, write_provenance

CLASS_NAMES = ("background", "liver", "tumour")


def add_info_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data info``."""
    p = sub.add_parser(
        "info", help="layout, cases, geometry, HU and label summary, and problems",
        description="Summarise a dataset: layout, per-case shape and spacing, HU range, voxels per "
                    "label, and every case that cannot be read. Exit 0 when all cases read, 1 otherwise.",
    )
    p.add_argument("folder", metavar="FOLDER",
                   help="dataset folder (MSD, nnU-Net v2 raw, LiTS, images/ + labels/) or a phantom spec "
                        "such as phantom:liver-tumor?n=4")
    p.add_argument("--sample", type=_positive_int, default=100_000, metavar="N",
                   help="HU voxels sampled per case for the median (default 100000; min and max use all voxels)")
    p.set_defaults(func=run_info)
    return p


def add_prepare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data prepare``."""
    p = sub.add_parser(
        "prepare", help="build the preprocessed slice cache used for training",
        description="Window (and optionally resample in-plane) every case into a cache folder of .npy "
                    "arrays for fast slice reads. Cases whose source and settings are unchanged are "
                    "reused. Exit 0 when every case is cached, 1 when some were skipped.",
    )
    p.add_argument("folder", metavar="FOLDER", help="dataset folder or phantom spec (as for `data info`)")
    p.add_argument("--out", "-o", required=True, metavar="CACHE", help="cache folder (created if absent)")
    p.add_argument("--window", default="liver", metavar="NAME|LO,HI",
                   help="CT window: liver (W400/L40, default), tumor (W200/L60), abdomen, wide, or LO,HI in "
                        "HU (write --window=-100,200 when LO is negative)")
    p.add_argument("--dtype", choices=("uint8", "int16"), default="uint8",
                   help="uint8: windowed grey values (compact, default); int16: HU (any window when read)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--spacing", type=_positive_float, metavar="MM", help="resample in-plane to MM mm pixels")
    size.add_argument("--size", type=_positive_int, metavar="PX", help="resample in-plane to PX x PX pixels")
    p.add_argument("--strict", action="store_true", help="stop at the first case that cannot be read (exit 2)")
    p.add_argument("--force", action="store_true",
                   help="write into CACHE even when it holds a cache with other settings (rebuilt) or other files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prepare)
    return p


# each adds one `samliver data` sub-command to the sub-parsers it is given
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], argparse.ArgumentParser]] = [add_info_parser,
                                                                                       add_prepare_parser]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``data`` command and its sub-commands; each sets ``func(args) -> int``."""
    parser = subparsers.add_parser("data", help="inspect datasets and build training caches",
                                   description="Inspect datasets (MSD, nnU-Net v2, LiTS, images/ + labels/, phantom).")
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def run_info(args: argparse.Namespace) -> int:
    """Read every case once, print a row per case and a summary; exit 1 if any case failed."""
    ds = load_dataset(args.folder, strict=False)
    _print_header(ds)
    width = max([len(n) for n in ds.names] + [4])
    print(f"\n{'case':<{width}}  {'shape (Z,Y,X)':<15} {'spacing (z,y,x) mm':<22} {'HU min/median/max':<22} "
          "voxels background/liver/tumour")
    rng = np.random.default_rng(0)
    shapes, spacings, samples, extremes, counts, problems = [], [], [], [], [], []
    for i, name in enumerate(ds.names):
        try:
            case = ds[i]
        except SamliverError as exc:
            problems.append((name, str(exc)))
            print(f"{name:<{width}}  ERROR (see problems)")
            continue
        hu = case.image.array.ravel()
        sample = hu if hu.size <= args.sample else hu[rng.choice(hu.size, size=args.sample, replace=False)]
        low, mid, high = float(hu.min()), float(np.median(sample)), float(hu.max())
        voxels = np.bincount(case.label.ravel(), minlength=3)[:3]
        shapes.append(case.image.shape)
        spacings.append(case.image.spacing)
        samples.append(sample)
        extremes.append((low, high))
        counts.append(voxels)
        print(f"{name:<{width}}  {'x'.join(map(str, case.image.shape)):<15} "
              f"{'x'.join(f'{s:.3g}' for s in case.image.spacing):<22} "
              f"{f'{low:.0f} / {mid:.0f} / {high:.0f}':<22} {' / '.join(str(int(v)) for v in voxels)}")
    if counts:
        _print_summary(shapes, spacings, samples, extremes, counts)
    print(f"\nproblems  {len(problems) or 'none'}")
    for name, message in problems:
        print(f"  {name}: {message}")
    return 1 if problems else 0


def run_prepare(args: argparse.Namespace) -> int:
    """Build or update the cache; print what was built, reused and skipped; exit 1 if any case was skipped."""
    from samliver.data.cache import CacheSettings, prepare_cache
    from samliver.data.intensity import window_for

    try:
        settings = CacheSettings(window=window_for(args.window), dtype=args.dtype, spacing=args.spacing,
                                 size=args.size)
    except ValueError as exc:
        raise DatasetError(f"--window {args.window}: {exc}") from None
    ds = load_dataset(args.folder, strict=args.strict)
    out = Path(args.out)
    _check_cache_folder(out, settings, args.force)
    created = missing_root(out)
    try:
        index = prepare_cache(ds, out, settings, strict=args.strict, progress=not args.quiet)
        cases = [index[n] for n in ds.names if n in index]
        if ds.names and not cases:
            name, message = next(iter(index.skipped.items()))
            raise DatasetError(f"{args.folder}: no case could be cached; {name}: {message}")
    except BaseException:
        if created is not None:  # nothing half-made is left: the folders did not exist before this call
            shutil.rmtree(created, ignore_errors=True)
        raise
    write_provenance(out, make_record("data prepare", {"settings": settings.as_json()}) | {"data": str(args.folder)})
    slices = sum(c.shape[0] for c in cases)
    tumour = sum(int(c.tumor_slices.sum()) for c in cases)
    nbytes = sum(c.image_path.stat().st_size + c.label_path.stat().st_size for c in cases)
    lo, hi = settings.window
    grid = (f"spacing {settings.spacing:g} mm" if settings.spacing else
            f"size {settings.size} px" if settings.size else "source grid")
    print(f"cache     {index.root}")
    print(f"settings  window ({lo:g}, {hi:g}) HU, {settings.dtype}, {grid}")
    print(f"cases     {len(cases)} cached: {len(index.built)} built, {len(index.reused)} reused, "
          f"{len(index.skipped)} skipped")
    print(f"slices    {slices} ({tumour} with tumour, {100 * tumour / max(slices, 1):.1f}%), "
          f"{nbytes / 2**20:.1f} MiB")
    for name, message in index.skipped.items():
        print(f"  skipped {name}: {message}")
    return 1 if index.skipped else 0


def _check_cache_folder(out: Path, settings, force: bool) -> None:
    """Refuse, unless ``force``, a cache folder built with other settings (every case would be rebuilt)
    or a folder holding files that are no samliver cache."""
    from samliver.data.cache import INDEX_FILE, CacheError, open_cache

    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder")
    if force or not out.exists() or not any(out.iterdir()):
        return
    if not (out / INDEX_FILE).is_file():
        raise OutputFolderError(f"{out}: holds files but no samliver cache ({INDEX_FILE}); pass --force to write "
                                "into it anyway, or choose another folder")
    try:
        old = open_cache(out)
    except CacheError as exc:
        raise OutputFolderError(f"{exc}; pass --force to rebuild the cache") from None
    if old.settings != settings:
        raise OutputFolderError(f"{out}: holds a cache built with other settings ({old.settings.as_json()}, not "
                                f"{settings.as_json()}); pass --force to rebuild every case, or choose another folder")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _print_header(ds: Dataset) -> None:
    where = str(ds.root) if ds.root is not None else ds.title
    labels = ", ".join(
        f"{value} {ds.label_names.get(value, '?')} -> {cls}" + (" (ignored)" if cls == 0 and value != 0 else "")
        for value, cls in sorted(ds.label_map.items())
    )
    print(f"dataset   {where}" + (f"  ({ds.title})" if ds.title and ds.title != where else ""))
    print(f"layout    {ds.layout}")
    print(f"cases     {len(ds)}")
    print(f"labels    {labels}")
    print(f"has_liver {'yes' if ds.has_liver else 'no (tumour targets only)'}")


def _print_summary(shapes: Sequence[tuple[int, ...]], spacings: Sequence[tuple[float, ...]],
                   samples: Sequence[np.ndarray], extremes: Sequence[tuple[float, float]],
                   counts: Sequence[np.ndarray]) -> None:
    shape, spacing = np.asarray(shapes), np.asarray(spacings)
    print(f"\nsummary over {len(counts)} readable case(s)")
    print("  shape    " + ", ".join(_range(a, shape[:, k], "") for k, a in enumerate("ZYX")))
    print("  spacing  " + ", ".join(_range(a, spacing[:, k], " mm") for k, a in enumerate("zyx")))
    pooled = np.concatenate(samples)
    print(f"  HU       min {min(lo for lo, _ in extremes):.0f}, median {np.median(pooled):.0f} "
          f"(sample of {pooled.size} voxels), max {max(hi for _, hi in extremes):.0f}")
    total = np.sum(counts, axis=0)
    share = ", ".join(f"{n} {int(v)} ({100 * v / max(total.sum(), 1):.2f}%)" for n, v in zip(CLASS_NAMES, total))
    with_liver = sum(int(c[1] > 0) for c in counts)
    with_tumour = sum(int(c[2] > 0) for c in counts)
    print(f"  labels   {share}")
    print(f"  cases    with liver {with_liver}/{len(counts)}, with tumour {with_tumour}/{len(counts)}")


def _range(axis: str, values: np.ndarray, unit: str) -> str:
    return f"{axis} {values.min():.4g}..{values.max():.4g}{unit} (median {np.median(values):.4g})"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
