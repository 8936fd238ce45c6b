"""The run folder: what a training run leaves behind, written by the main process only.

::

    run.json                    resolved config, processes, versions, base checkpoint sha256, data split,
                                validation history, results (rewritten atomically as the run goes)
    metrics.jsonl               one JSON line per logged step / validation (also sent to Accelerate's trackers)
    adapter_model.safetensors   the exported adapter (best by validation Dice), written at the end
    adapter_config.json
    report.md                   a short human-readable summary, written at the end
    checkpoints/step_NNNNNN/    resumable Accelerate state (trainable tensors, optimizer, scheduler,
                                RNG states, progress) and the best adapter as of that step; the newest
                                ``keep_checkpoints`` are kept
    checkpoints/best/           the best adapter so far (survives a resume)
    cache/                      the slice caches (unless ``cache_dir`` points elsewhere)
    logs/                       TensorBoard event files (when TensorBoard is installed)

Folders appear whole: each is written under a temporary name and renamed (`replace_dir`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from samliver.atomic import fsync_folder, write_bytes_atomic

from .config import ConfigError

CHECKPOINT = re.compile(r"^step_(\d{6,})$")
RUN_FILES = ("run.json", "metrics.jsonl", "report.md", "adapter_model.safetensors", "adapter_config.json",
             "batches.jsonl")


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one without a moment where
    neither exists under a name `recover_dir` can find."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_folder(final.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: Path) -> None:
    """Undo a `replace_dir` cut short between its two renames."""
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        os.replace(old, final)


class RunFolder:
    """Paths and writes of one run folder; every write is a no-op on processes other than the main one."""

    def __init__(self, root: Path, is_main: bool) -> None:
        self.root, self.is_main = Path(root), is_main
        self.checkpoints = self.root / "checkpoints"
        self.best = self.checkpoints / "best"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def holds_run(self) -> bool:
        return self.run_json.exists() or self.checkpoints.exists()

    def start(self, resume: bool, overwrite: bool) -> None:
        """Check the folder against the request and clean leftovers of an interrupted write."""
        if self.holds_run() and not (resume or overwrite):
            raise ConfigError(f"{self.root} already holds a run; pass --resume to continue it, --overwrite to start "
                              "over, or another --output-dir")
        if not self.is_main:
            return
        if overwrite and not resume:
            for name in RUN_FILES:
                (self.root / name).unlink(missing_ok=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            shutil.rmtree(self.root / "logs", ignore_errors=True)
        if self.checkpoints.exists():
            for path in self.checkpoints.iterdir():
                if CHECKPOINT.match(path.name.removesuffix(".old")) or path.name == "best.old":
                    recover_dir(path.with_name(path.name.removesuffix(".old")))
            for path in self.checkpoints.glob(".*.tmp"):
                shutil.rmtree(path, ignore_errors=True)

    def previous_run(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_json(self, info: dict[str, Any]) -> None:
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.run_json, (json.dumps(info, indent=2, default=str) + "\n").encode())

    def write_text(self, name: str, text: str) -> None:
        if self.is_main:
            write_bytes_atomic(self.root / name, text.encode())

    def append_jsonl(self, name: str, entry: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.root / name, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric lines of steps after ``after_step`` (written by a run that was then interrupted)."""
        for name in ("metrics.jsonl", "batches.jsonl"):
            path = self.root / name
            if not (self.is_main and path.exists()):
                continue
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("step", 0) <= after_step:
                    kept.append(line)
            write_bytes_atomic(path, "".join(f"{line}\n" for line in kept).encode())

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:06d}"

    def latest_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoints.glob("step_*") if p.is_dir() and CHECKPOINT.match(p.name)]
        return max(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1))) if found else None

    def save_checkpoint(self, accelerator: Any, step: int, keep: int) -> Path:
        """``accelerator.save_state`` into a temporary folder (every process writes its RNG state there),
        then the main process renames it to ``step_NNNNNN`` and prunes all but the newest ``keep``."""
        final = self.checkpoint_dir(step)
        tmp = self.checkpoints / f".{final.name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if self.is_main:
            if self.best.exists():  # the best adapter as of this step, so a resume from here restores it too
                shutil.copytree(self.best, tmp / "best_adapter")
            replace_dir(tmp, final)
            found = sorted((p for p in self.checkpoints.glob("step_*") if CHECKPOINT.match(p.name)),
                           key=lambda p: int(CHECKPOINT.match(p.name).group(1)))
            for old in found[:-max(keep, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def restore_best(self, checkpoint: Path) -> None:
        """Make ``checkpoints/best`` the best adapter as of ``checkpoint`` (a later one, written by the run
        that was interrupted after that checkpoint, belongs to steps that will be trained again)."""
        if not self.is_main:
            return
        saved = checkpoint / "best_adapter"
        tmp = self.checkpoints / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if saved.exists():
            shutil.copytree(saved, tmp)
            replace_dir(tmp, self.best)
        else:
            shutil.rmtree(self.best, ignore_errors=True)

    def save_best(self, model: Any, extra: dict[str, Any]) -> None:
        """Write ``model``'s adapter to ``checkpoints/best`` (whole folder replaced at once)."""
        if not self.is_main:
            return
        from samliver.adapters import save_adapter

        tmp = self.checkpoints / ".best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(model, tmp, extra=extra)
        replace_dir(tmp, self.best)

    def export_best(self) -> None:
        """Copy the best adapter's two files to the run folder's top level (atomically, one by one)."""
        if not self.is_main:
            return
        from samliver.adapters import CONFIG_NAME, WEIGHTS_NAME

        for name in (WEIGHTS_NAME, CONFIG_NAME):
            write_bytes_atomic(self.root / name, (self.best / name).read_bytes())
