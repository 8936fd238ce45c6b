"""``samliver doctor``: versions, device, weights present, cache folders and what is missing, in a
few lines. Reads installed-package metadata (nothing heavy is imported but torch) and file names
(no checkpoint is opened or hashed); always exits 0."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

#: distributions samliver needs (pyproject dependencies), in the order they are printed
REQUIRED = ("segment-anything", "transformers", "peft", "accelerate", "monai", "open-clip-torch",
            "safetensors", "SimpleITK", "nibabel", "pydicom", "highdicom", "pylibjpeg-openjpeg")
#: optional distributions: name -> what goes without it
OPTIONAL = {
    "tensorboard": "training curves (metrics.jsonl is still written; pip install tensorboard)",
    "sam2": "the SAM 2 reference tests only (pip install sam2)",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``doctor``."""
    p = subparsers.add_parser("doctor", help="versions, device, weights, caches and what is missing",
                              description="Print samliver's environment in a few lines: versions, the "
                                          "device torch sees, which checkpoints are present where, the cache "
                                          "folders, and what is missing. Always exits 0.")
    p.set_defaults(func=run)
    return p


def version_of(distribution: str) -> str | None:
    """Installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_summary() -> tuple[str, str | None]:
    """``(line, problem)``: torch's version and the best device; ``problem`` when there is no GPU."""
    import torch

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        count = torch.cuda.device_count()
        return f"torch {torch.__version__} ({build}); device cuda: {count} x {', '.join(names)}", None
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return f"torch {torch.__version__} ({build}); device mps (Apple GPU)", None
    why = "torch has no CUDA build" if not torch.version.cuda else "CUDA is built in but no GPU is visible"
    return (f"torch {torch.__version__} ({build}); device cpu",
            f"no GPU ({why}): inference works, training beyond samliver_tiny is slow")


def weights_summary() -> tuple[list[str], str | None]:
    """``(lines, problem)``: which manifest checkpoints are present, and where."""
    from samliver import weights_store as weights
    from samliver.errors import WeightsNotFoundError

    names = sorted(weights.manifest())
    present: dict[str, Path] = {}
    for name in names:
        try:
            present[name] = weights.find_checkpoint(name)
        except WeightsNotFoundError:
            continue
    lines = [f"weights: {len(present)} of {len(names)} checkpoints present"
             + (": " + ", ".join(f"{n} ({p})" for n, p in present.items()) if present else "")]
    problem = None
    if len(present) < len(names):
        missing = [n for n in names if n not in present]
        problem = (f"checkpoints not downloaded: {', '.join(missing)} "
                   "(`samliver weights download NAME`, or put the file in $SAMLIVER_WEIGHTS)")
    return lines, problem


def cache_summary() -> str:
    """One line: where checkpoints are searched and downloaded, and the Hugging Face / torch caches."""
    from samliver import weights_store as weights

    import torch.hub
    from huggingface_hub import constants as hf

    env = os.environ.get(weights.ENV_DIR)
    search = ", ".join(str(d) for d in weights.search_dirs())
    offline = " (offline)" if hf.HF_HUB_OFFLINE else ""
    return (f"caches: weights searched in {search}; downloads go to {weights.download_dir()} "
            f"(${weights.ENV_DIR} {'= ' + env if env else 'unset'}); Hugging Face {hf.HF_HUB_CACHE}{offline} "
            f"(CLIP text towers); torch hub {torch.hub.get_dir()}")


def report() -> tuple[list[str], list[str]]:
    """``(lines, missing)``: what ``samliver doctor`` prints, and the problems it lists last."""
    from samliver import __version__

    missing: list[str] = []
    lines = [f"samliver {__version__} at {Path(__file__).resolve().parents[1]}; "
             f"python {platform.python_version()} ({sys.executable})"]
    device, problem = device_summary()
    lines.append(device)
    missing += [problem] if problem else []
    versions = []
    for name in REQUIRED:
        version = version_of(name)
        versions.append(f"{name} {version or 'MISSING'}")
        if version is None:
            missing.append(f"{name} is not installed (a samliver dependency: pip install {name})")
    for name, without in OPTIONAL.items():
        version = version_of(name)
        if version is None:
            missing.append(f"{name} not installed: no {without}")
        else:
            versions.append(f"{name} {version}")
    lines.append("libraries: " + ", ".join(versions))
    weight_lines, problem = weights_summary()
    lines += weight_lines
    missing += [problem] if problem else []
    lines.append(cache_summary())
    return lines, missing


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 0 whatever is missing."""
    lines, missing = report()
    for line in lines:
        print(line)
    print("missing: nothing" if not missing else "missing:")
    for problem in missing:
        print(f"  - {problem}")
    return 0
