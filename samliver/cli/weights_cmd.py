"""``samliver weights list | download NAME | verify [NAME]``: manage model checkpoints."""

from __future__ import annotations

import argparse

from samliver import weights_store as weights
from samliver.errors import WeightsNotFoundError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``weights`` command and its sub-commands; each sets ``func(args) -> int``."""
    parser = subparsers.add_parser(
        "weights", help="list, download and verify model checkpoints",
        description="Manage model checkpoints. Downloads go to $SAMLIVER_WEIGHTS, else the "
                    "repo's weights/ folder in a source checkout, else ~/.cache/samliver/weights.",
    )
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="weights_command", metavar="{list,download,verify}", required=True)
    names = sorted(weights.manifest())

    p_list = sub.add_parser("list", help="known models, their files and whether they are present")
    p_list.set_defaults(func=run_list)

    p_dl = sub.add_parser("download", help="download a checkpoint and check its digest")
    p_dl.add_argument("name", choices=names, metavar="NAME", help="model name: " + ", ".join(names))
    p_dl.add_argument("--url", help="download from this URL instead of the manifest's source")
    p_dl.add_argument("--dest", metavar="DIR", help="folder to save into (default: the folder `samliver weights list` names)")
    p_dl.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_dl.set_defaults(func=run_download)

    p_verify = sub.add_parser("verify", help="check present checkpoints against known digests")
    p_verify.add_argument("name", nargs="?", choices=names, metavar="NAME", help="one model (default: all)")
    p_verify.set_defaults(func=run_verify)
    return parser


def run(args: argparse.Namespace) -> int:
    """Dispatch to the sub-command named in ``args.weights_command``."""
    handlers = {"list": run_list, "download": run_download, "verify": run_verify}
    return handlers[args.weights_command](args)


def run_list(args: argparse.Namespace) -> int:
    """Print one row per known model: name, file, where it is (or ``-``), known digest."""
    rows = [("NAME", "FILE", "DIGEST", "PRESENT")]
    for name in sorted(weights.manifest()):
        entry = weights.manifest_entry(name)
        try:
            where = str(weights.find_checkpoint(name))
        except WeightsNotFoundError:
            where = "-" if entry["url"] else "- (bundled/trained, no download)"
        rows.append((name, entry["file"], _digest_kind(entry), where))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    print(f"downloads go to {weights.download_dir()}")
    return 0


def _digest_kind(entry: dict) -> str:
    """Which digest the manifest knows for an entry: sha256, md5 prefix, or none."""
    if entry["sha256"]:
        return "sha256"
    return "md5-prefix" if entry["md5_prefix"] else "none"


def run_download(args: argparse.Namespace) -> int:
    """Download one checkpoint; print ``sha256  path`` (sha256sum format)."""
    path = weights.download(args.name, dest_dir=args.dest, url=args.url, progress=not args.no_progress)
    print(f"{weights.read_record(path) or weights.sha256_file(path)}  {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """Check checkpoints; exit 1 if any mismatches, or if the one named model is missing."""
    if args.name is not None:
        weights.find_checkpoint(args.name)  # a named, missing model: one-line error with the fix
    results = weights.verify(args.name)
    width = max(len(r.name) for r in results)
    for r in results:
        where = str(r.path) if r.path else ""
        print(f"{r.status:<10}  {r.name:<{width}}  {where}  {r.detail}".rstrip())
    return 1 if any(r.status == "mismatch" for r in results) else 0
