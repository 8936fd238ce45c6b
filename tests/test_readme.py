"""No README command can rot: every command in README.md's ``bash`` blocks has an entry in
`EXERCISED` saying how it is exercised, and a command without one fails the test.

- `Run`: run for real (in-process, in a scratch folder, in README order, so later commands use
  what earlier ones wrote), with the listed substitutions that make it cheap and offline
  (``--checkpoint random``, a tiny phantom, one training step ...).
- `Parse`: too expensive, or needs data / downloads / GPUs: the real parsers must accept it
  (samliver's argparse, ``train_adapter.py``'s parser *and* config resolution, Accelerate's
  ``launch`` parser and its config file), plus the checks its entry lists.
- `Check`: shell plumbing (setup, the test command), checked by a function.

The ``python`` block runs with the substitutions in `PYTHON_SUBSTITUTIONS`; ``text`` blocks are
the command synopsis (each must name registered commands, and every command must appear); the
model and strategy tables must match the registries; pictures must exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TINY = "phantom:tiny?n=4&seed=0"
TINY_TEST = "phantom:tiny?n=2&seed=100"
# a training run of one optimizer step on tiny phantoms with random weights
ONE_STEP = ("--checkpoint", "random", "--data", TINY, "--test-data", TINY_TEST, "--max-steps", "1", "--batch-size", "2",
            "--eval-every", "0", "--checkpoint-every", "1", "--log-with", "none", "--set", "warmup_steps=0",
            "--set", "augment=false", "--set", "final_test=false", "--set", "eval_at_start=false")


# ---------------------------------------------------------------- how each command is exercised


@dataclass(frozen=True)
class Run:
    """Run the command; ``replace`` swaps flag values (the flag must be in the command; a tuple
    for ``nargs=2`` flags), ``add`` appends arguments; ``outputs`` must exist afterwards."""

    why: str = ""
    replace: dict[str, str | tuple[str, ...]] = field(default_factory=dict)
    add: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Parse:
    """Parse with the real parsers; ``inputs`` must exist (made by earlier README commands)."""

    why: str
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    """Shell plumbing, checked by ``check(repo_root)``."""

    why: str
    check: Callable[[Path], None]


def _setup_script(root: Path) -> None:
    script = root / "scripts" / "setup.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)  # it parses
    text = script.read_text()
    assert "python3 -m venv .venv" in text and '-e ".[test]"' in text  # makes the .venv the README activates


def _activate(root: Path) -> None:
    assert "python3 -m venv .venv" in (root / "scripts" / "setup.sh").read_text()


def _test_command(root: Path) -> None:
    # CI runs exactly the README's test command, and pytest is what it calls
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in (root / ".ci" / "run").read_text()
    assert importlib.util.find_spec("pytest") is not None


PHANTOM = "phantoms/images/phantom-liver-tumor-0002.nii.gz"
TASK03 = "/data/Task03_Liver: a dataset to download"
EXERCISED: dict[str, Run | Parse | Check] = {
    "bash scripts/setup.sh": Check("pip installs; CI runs it", _setup_script),
    ". .venv/bin/activate": Check("made by setup.sh", _activate),
    ".venv/bin/python -m pytest -q": Check("this very test suite", _test_command),
    "python scripts/make_readme_figure.py --adapter weights/samliver_tiny_liver_tumor --prompts auto": Run(
        "the bundled weights and adapter, into the scratch folder",
        replace={"--adapter": str(ROOT / "weights" / "samliver_tiny_liver_tumor")},
        add=("-o", "overlay.png"), outputs=("overlay.png",)),
    "accelerate launch train_adapter.py --method lora": Run(
        "one step on tiny phantoms with random weights; the launcher part through Accelerate's parser",
        add=(*ONE_STEP, "--output-dir", "runs/lora"),
        outputs=("runs/lora/adapter_model.safetensors", "runs/lora/adapter_config.json", "runs/lora/run.json")),
    "samliver synth phantom --n 1 --seed 2 -o phantoms": Run(outputs=(PHANTOM,)),
    f"samliver segment {PHANTOM} --model samliver_tiny --auto -o auto.nii.gz": Parse(
        "encodes every slice the generator proposes (tests/test_auto.py runs --auto)", inputs=(PHANTOM,)),
    f'samliver segment {PHANTOM} --model samliver_tiny --box "26,40,79,149,184" --box "26,52,97,98,138" '
    "--label 1 --label 2 -o boxes.nii.gz": Run("random weights", add=("--checkpoint", "random"),
                                                outputs=("boxes.nii.gz",)),
    "samliver --help": Run(),
    "samliver segment --help": Run(),
    'samliver segment path/to/ct_series/ --model medsam_vit_b --box "10,150,180,330,330" --propagate -o liver.dcm':
        Parse("a placeholder DICOM folder and MedSAM weights (tests/test_dicom_seg.py runs -o .dcm)"),
    "samliver weights list": Run(),
    "samliver weights download medsam_vit_b": Parse("a large download (network)"),
    "samliver doctor": Run(),
    "samliver data info /data/Task03_Liver": Parse(TASK03),
    "accelerate launch --config_file configs/accelerate/single_gpu.yaml train_adapter.py --method lora --model "
    'medsam_vit_b --data /data/Task03_Liver --test-data none --set "split=[0.7,0.15,0.15]" '
    "--output-dir runs/lora-medsam": Parse(f"a GPU, MedSAM weights and {TASK03}"),
    "accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml --num_processes 4 train_adapter.py "
    '--method lora --model medsam_vit_b --data /data/Task03_Liver --test-data none --set "split=[0.7,0.15,0.15]" '
    "--gradient-checkpointing --output-dir runs/lora-medsam-4gpu": Parse(f"4 GPUs (tests/test_training.py runs "
                                                                         "two processes over gloo) and {TASK03}"),
    "accelerate launch --config_file configs/accelerate/multi_node.yaml --machine_rank 0 train_adapter.py --method "
    'lora --model sam_vit_h --data /data/Task03_Liver --test-data none --set "split=[0.7,0.15,0.15]" '
    "--gradient-checkpointing --output-dir /shared/runs/lora-vit-h": Parse("two machines with 4 GPUs each"),
    "python train_adapter.py --method lora --model medsam_vit_b --data /data/Task03_Liver --test-data none --set "
    '"split=[0.7,0.15,0.15]" --output-dir runs/lora-medsam --resume': Parse(f"a killed run of {TASK03} "
                                                                           "(tests/test_training.py resumes)"),
    'samliver evaluate --model samliver_tiny --data "phantom:liver-tumor?n=4&seed=1000" --prompts '
    "box,point-1,clicks-5 -o results/tiny": Run(
        "one tiny phantom, box prompts, random weights",
        replace={"--data": "phantom:tiny?n=1&seed=1000", "--prompts": "box"},
        add=("--checkpoint", "random", "--no-figures"), outputs=("results/tiny/summary.json",)),
    "samliver evaluate --model medsam_vit_b --data /data/Task03_Liver --split test --prompts "
    "box,box-jitter-5mm,point-1,clicks-5,key-slice-propagate -o results/medsam-zero-shot": Parse(TASK03),
    "samliver evaluate --model medsam_vit_b --adapter runs/lora-medsam --data /data/Task03_Liver --split test "
    "--prompts box,box-jitter-5mm,point-1,clicks-5,key-slice-propagate -o results/medsam-lora": Parse(TASK03),
    "samliver evaluate --compare results/medsam-zero-shot results/medsam-lora": Run(
        "compares the tiny run above with itself", replace={"--compare": ("results/tiny", "results/tiny")}),
}

#: the ``python`` block, made cheap: (README text, replacement, why)
PYTHON_SUBSTITUTIONS = (
    ("make_phantom(2)", "make_phantom(2, shape=(8, 64, 64))", "8 slices of 64 x 64"),
    ('samliver.load_model("samliver_tiny")', 'samliver.load_model("samliver_tiny", checkpoint="random")',
     "no weights needed"),
)


# ---------------------------------------------------------------- reading the README


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``[(language, body)]`` of the fenced code blocks."""
    pattern = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)
    return [(m["lang"], m["body"]) for m in pattern.finditer(text)]


def _split_outside_quotes(line: str) -> list[str]:
    """Split a shell line on ``&&`` and drop a ``#`` comment, both only outside quotes."""
    parts, current, quote, i = [], "", None, 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (not current or current[-1].isspace()):
            break
        elif line.startswith("&&", i):
            parts.append(current)
            current, i = "", i + 2
            continue
        current += ch
        i += 1
    parts.append(current)
    return [" ".join(p.split()) for p in parts if p.strip()]


def bash_commands(text: str) -> list[str]:
    """Every command of the ``bash`` blocks, in order (continuation lines joined)."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                out += _split_outside_quotes(line)
    return out


# ---------------------------------------------------------------- exercising


def _replace(argv: list[str], replace: dict[str, str | tuple[str, ...]]) -> list[str]:
    argv = list(argv)
    for flag, value in replace.items():
        values = (value,) if isinstance(value, str) else tuple(value)
        assert flag in argv, f"substitution for {flag}, which the README command no longer has"
        i = argv.index(flag)
        argv[i + 1:i + 1 + len(values)] = values
    return argv


def _train_parse(args: list[str]) -> None:
    from samliver.training.cli import build_parser, overrides_from
    from samliver.training.resolution import resolve

    parsed, extra = build_parser().parse_known_args(args)
    assert not extra, f"train_adapter.py does not know {extra}"
    config, used = resolve(parsed.config, overrides_from(parsed))  # the method, its preset and every value check
    assert used is None or (ROOT / used).is_file() or Path(used).is_file()
    assert config.method


def _launch(argv: list[str]) -> list[str]:
    """``accelerate launch [launcher args] train_adapter.py ARGS`` -> ARGS, after Accelerate's parser."""
    from accelerate.commands.launch import launch_command_parser

    launched = launch_command_parser().parse_args(argv[2:])
    if launched.config_file:
        config = ROOT / launched.config_file
        assert config.is_file(), config
        assert yaml.safe_load(config.read_text())["distributed_type"]
    assert launched.training_script == "train_adapter.py" and (ROOT / "train_adapter.py").is_file()
    return list(launched.training_script_args)


def _run_train(args: list[str]) -> None:
    from accelerate.state import AcceleratorState, GradientState

    from samliver.training import main as train_main

    try:
        assert train_main(args) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def _run_samliver(args: list[str]) -> None:
    from samliver.cli.main import main

    try:
        rc = main(args)
    except SystemExit as exc:  # --help
        rc = exc.code
    assert rc in (0, None), f"samliver {' '.join(args)} exited {rc}"


def _parse_samliver(args: list[str]) -> None:
    from samliver.cli.main import build_parser
    from samliver.evaluation.settings import parse_settings

    parsed = build_parser().parse_args(args)
    if parsed.command == "evaluate" and not parsed.compare:
        parse_settings(parsed.prompts)  # every prompt setting exists


def _run_script(path: Path, args: list[str]) -> None:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(args) == 0


def exercise(command: str, how: Run | Parse | Check) -> None:
    if isinstance(how, Check):
        how.check(ROOT)
        return
    argv = shlex.split(command)
    if isinstance(how, Parse):
        for path in how.inputs:
            assert Path(path).exists(), f"{path}: no earlier README command makes it"
    if argv[:2] == ["accelerate", "launch"]:
        script_args = _launch(argv)
        _train_parse(script_args)
        if isinstance(how, Run):
            _run_train(_replace(script_args, how.replace) + list(how.add))
    elif argv[:2] == ["python", "train_adapter.py"]:
        _train_parse(argv[2:])
        if isinstance(how, Run):
            _run_train(_replace(argv[2:], how.replace) + list(how.add))
    elif argv[0] == "samliver":
        if not set(argv) & {"--help", "-h"}:
            _parse_samliver(argv[1:])
        if isinstance(how, Run):
            _run_samliver(_replace(argv[1:], how.replace) + list(how.add))
    elif argv[0] == "python" and argv[1].startswith("scripts/"):
        assert isinstance(how, Run)
        _run_script(ROOT / argv[1], _replace(argv[2:], how.replace) + list(how.add))
    else:
        raise AssertionError(f"{command}: no runner for this program; add one to exercise()")
    for path in getattr(how, "outputs", ()):
        assert Path(path).exists(), f"{command}: did not write {path}"


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_every_readme_command_has_an_entry_and_every_entry_a_command(readme: str) -> None:
    commands = bash_commands(readme)
    missing = [c for c in commands if c not in EXERCISED]
    assert not missing, "README commands with no entry in EXERCISED (say how each is run or parsed):\n" + \
        "\n".join(missing)
    stale = [c for c in EXERCISED if c not in commands]
    assert not stale, "EXERCISED entries for commands the README no longer has:\n" + "\n".join(stale)


def test_readme_commands_run_or_parse(readme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAMLIVER_WEIGHTS", str(tmp_path / "weights"))  # no checkpoint: random weights only
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = set()
        for command in bash_commands(readme):
            if command in seen:
                continue
            seen.add(command)
            exercise(command, EXERCISED[command])
    finally:
        torch.set_num_threads(threads)


def test_readme_python_block_runs(readme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code,) = [body for lang, body in fenced_blocks(readme) if lang == "python"]
    for old, new, _ in PYTHON_SUBSTITUTIONS:
        assert old in code, f"substitution target {old!r} is no longer in the README's python block"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md (python block)", "exec"), scope)  # noqa: S102 - the README's own example
    ct, mask = scope["ct"], scope["mask"]
    assert mask.shape == ct.shape and mask.dtype == np.uint8
    assert scope["liver3d"].shape == ct.shape and scope["pred"].masks.shape[1:] == ct.shape[1:]
    import samliver

    np.testing.assert_array_equal(samliver.load_label(tmp_path / "mask.nii.gz", like=ct), mask)


def test_synopsis_names_every_command_and_only_real_ones(readme: str) -> None:
    from samliver.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    synopsis = "\n".join(body for lang, body in fenced_blocks(readme) if lang == "text")
    named = set(re.findall(r"^samliver (\w+)", synopsis, re.M))
    assert named == set(sub.choices), f"synopsis names {sorted(named)}; commands are {sorted(sub.choices)}"
    for line in synopsis.splitlines():
        match = re.match(r"samliver (\w+) (\w+)", line)
        inner = next((a for a in sub.choices[match[1]]._actions if isinstance(a, argparse._SubParsersAction)),
                     None) if match else None
        if inner is not None:  # e.g. `weights list | download NAME`: each alternative is a sub-command
            for word in re.findall(r"(?:^samliver \w+ |\| )(\w+)", line):
                assert word in inner.choices, f"samliver {match[1]} {word}"


def _table(readme: str, header: str) -> list[list[str]]:
    lines = readme.split(header, 1)[1].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_models_table_matches_the_registry(readme: str) -> None:
    import samliver
    from samliver.registry import get_spec

    rows = _table(readme, "| name | family | input (px) |")
    listed = {}
    for row in rows:
        for name in re.findall(r"`([^`]+)`", row[0]):
            listed[name] = int(row[2])
    assert sorted(listed) == sorted(samliver.list_models())
    for name, size in listed.items():
        assert get_spec(name).input_size == size, name


def test_strategies_table_matches_the_registry_and_presets(readme: str) -> None:
    from samliver.adapters import list_strategies

    rows = _table(readme, "| strategy | preset")
    names = {re.findall(r"`([^`]+)`", row[0])[0] for row in rows}
    assert names == set(list_strategies())
    for row in rows:
        strategy = re.findall(r"`([^`]+)`", row[0])[0]
        preset = ROOT / re.findall(r"`([^`]+)`", row[1])[0]
        config = yaml.safe_load(preset.read_text())
        assert config["method"] == strategy, preset
        extra = re.findall(r"`(\w+): (\w+)`", row[0])  # e.g. head: multiclass
        for key, value in extra:
            assert str(config["method_config"][key]) == value, preset


def test_pictures_and_linked_files_exist(readme: str) -> None:
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        assert (ROOT / target).is_file(), target
    for path in set(re.findall(r"`((?:configs|scripts)/[\w./-]+)`", readme)):
        if not re.search(r"\b[A-Z]{2,}\b", path):  # not a placeholder such as configs/train/NAME.yaml
            assert (ROOT / path).is_file(), path
