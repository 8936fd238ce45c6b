"""``samliver segment DIR -o OUTDIR``: segment every CT in a folder, skipping (and reporting) bad ones.

DIR holds NIfTI files (``*.nii``, ``*.nii.gz``) and/or subfolders that each hold one DICOM series; a
folder holding DICOM files itself is one series and is segmented alone (its subfolders are ignored).
Each CT is segmented as the single-CT command would (`segment_cmd.run`, with the model loaded once)
and written to ``OUTDIR/<case>.nii.gz``, ``<case>`` being the file name without its suffix or the
subfolder's name.
Prompts come from ``--auto``/``--text`` where those apply to every CT, or from ``--prompts-file
PROMPTS_DIR`` holding one ``<case>.json`` per CT.

A CT that cannot be segmented (unreadable, not CT in HU, bad or missing prompts) is skipped and
reported, and the exit status is 1; ``--strict`` stops at the first one instead (exit 2). When no CT
can be segmented the command fails (exit 2) and leaves nothing behind. OUTDIR records what produced
it (`samliver.provenance`); another run's outputs there are refused unless ``--force``, while the same
run again keeps the masks it already wrote (so a killed batch continues where it stopped).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from samliver.errors import PromptError, SamliverError
from samliver.io.dicom import is_dicom_file
from samliver.provenance import claim_folder, make_record, missing_root, write_provenance

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
# argparse fields that do not change the masks (or are per-case), left out of the provenance key
_NOT_IDENTITY = {"ct", "output", "func", "command", "device", "debug", "strict", "force"}


def is_batch_input(path: str | Path) -> bool:
    """True for a folder of CTs (NIfTI files or subfolders, and no DICOM file of its own); False for a
    file or a DICOM series folder."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not any(p.is_dir() or (p.is_file() and _NIFTI.match(p.name)) for p in entries):
        return False
    return not any(p.is_file() and not _NIFTI.match(p.name) and is_dicom_file(p) for p in entries)


def batch_inputs(folder: Path) -> dict[str, Path]:
    """Case name -> CT path (a NIfTI file or a DICOM series subfolder), in name order.

    Raises:
        SamliverError: two inputs would write the same output name (``a.nii`` and ``a.nii.gz``).
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue  # hidden files, macOS resource forks
        match = _NIFTI.match(path.name) if path.is_file() else None
        name = match["stem"] if match else (path.name if path.is_dir() else None)
        if name is None:
            continue
        if name in found:
            raise SamliverError(f"{folder}: {found[name].name} and {path.name} would both be written as {name}.nii.gz")
        found[name] = path
    return found


def run_batch(args: argparse.Namespace, run_one, load_model) -> int:
    """Segment every CT of the folder ``args.ct`` into the folder ``args.output``.

    Args:
        args: the parsed ``samliver segment`` arguments.
        run_one: ``run_one(case_args, model=model) -> int``, the single-CT command.
        load_model: ``load_model(args) -> PromptableSegmenter``, as the single-CT command loads it.
    Returns:
        0 when every CT was segmented, 1 when some were skipped.
    """
    source, out = Path(args.ct), Path(args.output)
    if out.name.lower().endswith((".nii", ".nii.gz", ".dcm")):
        raise SamliverError(f"{out}: {source} is a folder of CTs; -o must name an output folder, not a file")
    if getattr(args, "box", None):
        raise PromptError(f"--box: applies to one CT; for the folder {source} use --prompts-file PROMPTS_DIR "
                          "(one CASE.json per CT) or automatic prompts")
    prompts_dir = Path(args.prompts_file) if getattr(args, "prompts_file", None) else None
    if prompts_dir is not None and not prompts_dir.is_dir():
        raise PromptError(f"{prompts_dir}: for a folder of CTs, --prompts-file names a folder of CASE.json files")
    cases = batch_inputs(source)
    if not cases:
        raise SamliverError(f"{source}: no NIfTI files or DICOM series folders to segment")
    model = load_model(args)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
              if k not in _NOT_IDENTITY and not callable(v)}
    record = make_record("segment", config, {"model": getattr(model, "checkpoint_sha256", None)})
    previous = claim_folder(out, record, force=args.force)
    done = set(previous.get("outputs", [])) if previous else set()
    if previous:
        record["created"] = previous.get("created", record["created"])
    record["outputs"] = sorted(done)
    created = missing_root(out)
    skipped: dict[str, str] = {}
    written = 0
    for i, (name, path) in enumerate(cases.items()):
        where = f"[{i + 1}/{len(cases)}] {name}"
        target = f"{name}.nii.gz"
        if target in done and (out / target).is_file():
            print(f"{where}: done before, kept")
            written += 1
            continue
        case_args = argparse.Namespace(**{**vars(args), "ct": str(path), "output": str(out / target)})
        if prompts_dir is not None:
            case_args.prompts_file = str(prompts_dir / f"{name}.json")
        out.mkdir(parents=True, exist_ok=True)
        try:
            run_one(case_args, model=model)
        except SamliverError as exc:
            if args.strict:
                _remove_if_empty(created)
                raise
            skipped[name] = str(exc)  # listed at the end (stderr stays one line when every CT fails)
            continue
        written += 1
        record["outputs"] = sorted(set(record["outputs"]) | {target})
        write_provenance(out, record)
    _remove_if_empty(created)
    if not written:
        first, why = next(iter(skipped.items()))
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise SamliverError(f"{source}: no CT could be segmented; {first}: {why}{more}")
    print(f"segmented {written} of {len(cases)} CT(s) into {out}" + (f"; skipped {len(skipped)}:" if skipped else ""))
    for name, message in skipped.items():
        print(f"  skipped {name}: {message}")
    return 1 if skipped else 0


def _remove_if_empty(created: Path | None) -> None:
    """Remove the folders this batch created (``created``: the outermost) if nothing was written into them."""
    if created is None or not created.is_dir():
        return
    for folder in sorted((p for p in created.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if any(folder.iterdir()):
            return
        folder.rmdir()
    if not any(created.iterdir()):
        created.rmdir()
