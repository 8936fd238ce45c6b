"""Training: config, prompt simulation, each strategy learns, the run folder, resume, several processes,
and one-line errors. Offline, seeded, CPU; tiny phantoms and samliver_tiny with random weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samliver
from samliver.training import TrainConfig, main, resolve
from samliver.training.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = "phantom:tiny?n=4&seed=0"
TINY_TEST = "phantom:tiny?n=2&seed=100"


pytestmark = pytest.mark.usefixtures("one_thread")


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def small(out: Path, **over) -> dict:
    """Overrides of a few-second run on tiny phantoms."""
    values = dict(method="lora", checkpoint="random", data=TINY, test_data=TINY_TEST, max_steps=6, batch_size=2,
                  lr=1e-3, warmup_steps=2, eval_every=3, checkpoint_every=3, eval_at_start=False, augment=False,
                  log_with="none", final_test=False, output_dir=str(out))
    values.update(over)
    return values


def run(overrides: dict, **kwargs):
    from samliver.training.loop import train

    config, _ = resolve(None, overrides)
    try:
        return train(config, **kwargs)
    finally:
        _reset_accelerate()


def metrics(run_dir: Path) -> tuple[list[float], list[dict]]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if "loss" in e], [e for e in lines if "val/score" in e]


def cli(*args: str, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train_adapter.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def random_checkpoint(path: Path) -> Path:
    """A random samliver_tiny checkpoint file (so the base has a sha256 to check)."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = samliver.load_model("samliver_tiny", checkpoint="random")
    save_file({k: v.contiguous() for k, v in model.sam.state_dict().items()}, str(path))
    return path


# ------------------------------------------------------------------ config


def test_config_presets_overrides_and_aliases(tmp_path):
    config, used = resolve(None, {"method": "lora"})
    defaults = TrainConfig()
    assert used.endswith("configs/train/lora.yaml")
    assert (config.max_steps, config.data) == (defaults.max_steps, defaults.data)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("method: depth3d\nmethod-config: {depth: 3}\nprompts: {corrective-clicks: 2}\n")
    config, _ = resolve(yaml_file, {"max_steps": 7, "prompts": {"box_prob": 1}})
    assert (config.method, config.method_config, config.max_steps) == ("depth3d", {"depth": 3}, 7)
    assert (config.prompts.corrective_clicks, config.prompts.box_prob) == (2, 1.0)
    yaml_file.write_text("lr: 5e-4\nweight_decay: 1E-2\nmethod_config: {dropout: 5e-2}\nsplit: [0.9, 1e-1]\n")
    config, _ = resolve(yaml_file, {})                       # plain PyYAML reads these four as strings
    assert (config.lr, config.weight_decay, config.method_config, config.split) == (5e-4, 0.01, {"dropout": 0.05},
                                                                                     [0.9, 0.1])
    from samliver.training.cli import build_parser, overrides_from

    args = build_parser().parse_args(["--max_steps", "3", "--learning_rate", "0.01", "--checkpointing_steps", "2",
                                      "--method-config", "rank=8", "--set", "loss.iou=0.5", "--resume"])
    over = overrides_from(args)
    assert over == {"max_steps": 3, "lr": 0.01, "checkpoint_every": 2, "method_config": {"rank": 8},
                    "loss": {"iou": 0.5}} and args.resume == "latest"


def test_every_train_preset_resolves():
    presets = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"lora", "full", "decoder", "decoder_head", "depth3d", "pretrain_tiny"}
    for preset in presets:
        config, _ = resolve(preset, {})
        assert config.max_steps >= 1, preset


@pytest.mark.parametrize("overrides, needle", [
    ({"method": "lorra"}, "did you mean 'lora'?); registered: decoder, depth3d, full, lora"),
    ({"prompt": {}}, "did you mean 'prompts'?"),
    ({"prompts": {"box_prb": 0.1}}, "did you mean 'prompts.box_prob'?"),
    ({"method_config": {"rnk": 2}}, "did you mean 'rank'?"),
    ({"max_steps": "many"}, "max_steps: expected int"),
    ({"lr": "1e-3x"}, "lr: expected float, got '1e-3x'"),
    ({"split": [0.5, 0.6]}, "summing to 1"),
])
def test_config_errors_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        resolve(None, overrides)
    assert needle in str(err.value)


def test_text_descriptions_match_targets_by_label_not_spelling():
    from samliver.prompts.clip_text import TINY_TOWER

    tiny = {"enabled": True, "model": TINY_TOWER, "checkpoint": "random"}
    british = {"liver": ["liver"], "tumour": ["liver tumour", "hepatic lesion"]}
    config, _ = resolve(None, {"text_prompts": {**tiny, "descriptions": british}})
    assert config.targets == ["liver", "tumor"] and config.text_prompts.descriptions == british
    with pytest.raises(ConfigError, match=r"no descriptions for target\(s\) liver$"):
        resolve(None, {"text_prompts": {**tiny, "descriptions": {"tumour": ["liver tumour"]}}})


# ------------------------------------------------------------------ prompts and steps


def test_prompt_simulation_is_seeded_and_inside_the_slice():
    from samliver.training.config import PromptSettings
    from samliver.training.prompting import corrective_prompts, initial_prompts, object_boxes

    masks = np.zeros((2, 32, 32), bool)
    masks[0, 4:10, 5:20] = True
    masks[1, 20:30, 2:6] = True
    masks[1, 25:27, 28:31] = True               # a second piece of the same object: one box around both
    assert object_boxes(masks).tolist() == [[5, 4, 20, 10], [2, 20, 31, 30]]
    settings = PromptSettings(box_prob=1.0, box_jitter=0.5, box_jitter_max_px=3)
    a = initial_prompts(masks, np.array([1, 2], np.uint8), settings, np.random.default_rng(7))
    b = initial_prompts(masks, np.array([1, 2], np.uint8), settings, np.random.default_rng(7))
    assert np.array_equal(a.boxes, b.boxes) and (np.abs(a.boxes - object_boxes(masks)) <= 3).all()
    clicks = initial_prompts(masks, np.array([1, 2], np.uint8), PromptSettings(box_prob=0.0, max_negative_points=0),
                             np.random.default_rng(1))
    x, y = clicks.points[..., 0].astype(int), clicks.points[..., 1].astype(int)
    assert all(masks[i][y[i], x[i]].all() for i in range(2))
    predicted = np.zeros_like(masks)
    predicted[0] = masks[0]
    predicted[0, 0, 0] = True                   # object 0: one false-positive pixel; object 1: all missed
    nxt = corrective_prompts(a, predicted, masks, np.zeros((2, 1, 8, 8), np.float32), np.random.default_rng(0))
    assert nxt.points[0, -1].tolist() == [0.0, 0.0] and nxt.point_labels[:, -1].tolist() == [0, 1]
    assert nxt.masks.shape == (2, 1, 8, 8) and np.array_equal(nxt.boxes, a.boxes)

    # the loader's PromptSimulator draws in this order from the item's seed: objects, then their prompts
    from samliver.training.prompting import ClickPlan, PromptSimulator, choose_objects

    three = np.concatenate([masks, masks[:1]])
    labels = np.array([1, 2, 2])
    settings = PromptSettings(max_objects=2, box_prob=0.5)
    plan, keep = PromptSimulator(settings)(three, labels, seed=11)
    rng = np.random.default_rng(11)
    want_keep = choose_objects(3, 2, rng)
    want = initial_prompts(three[want_keep], labels[want_keep].astype(np.uint8), settings, rng)
    assert isinstance(plan, ClickPlan) and np.array_equal(keep, want_keep)
    for field in ("boxes", "points", "point_labels", "labels"):
        got, expected = getattr(plan.prompts, field), getattr(want, field)
        assert (got is None and expected is None) or np.array_equal(got, expected), field
    assert np.array_equal(plan.masks, three[want_keep]) and plan.rng.random() == rng.random()
    assert PromptSimulator(settings)(three[:0], labels[:0], seed=11)[0] is None


def test_gradient_checkpointing_gives_the_same_gradients():
    from samliver.adapters import apply_strategy
    from samliver.training.steps import enable_gradient_checkpointing

    grads = []
    for wrap in (False, True):
        torch.manual_seed(0)
        model = apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "full", {}).train()
        if wrap:
            assert enable_gradient_checkpointing(model) == 4
        pixels = torch.linspace(-1, 1, 3 * 256 * 256).reshape(1, 3, 256, 256)
        model.encode(pixels).image_embeddings.square().sum().backward()
        grads.append(model.sam.image_encoder.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("corrective_clicks", [0, 1])
def test_prompted_step_reads_nothing_back_from_the_device(tmp_path, corrective_clicks):
    """Prompts are drawn in the loader: the step runs on the meta device, where any read of a tensor's
    values (``.cpu()``, ``.item()``, ``int(t)``) raises. Corrective clicks need the prediction, so they do read."""
    from samliver.adapters import apply_strategy
    from samliver.training.config import PromptSettings, TrainConfig
    from samliver.training.data import build_train_loader, split_and_cache
    from samliver.training.steps import make_step, step_kind

    config = TrainConfig(method="lora", checkpoint="random", data="phantom:tiny?n=2&seed=0", test_data=None,
                         split=[1.0, 0.0], augment=False, batch_size=2, log_with=None, cache_dir=str(tmp_path),
                         prompts=PromptSettings(corrective_clicks=corrective_clicks))
    split = split_and_cache(config, tmp_path, True, lambda: None)
    torch.manual_seed(0)
    step = make_step(apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "lora", {}), config)
    loader = build_train_loader(config, split, step.model, step_kind(step.model), False, 1, print, step.prompter)
    batch = next(iter(loader.loader))
    loss = step(batch)["loss"]
    assert len(batch["prompt_plans"]) == 2 and torch.isfinite(loss) and torch.equal(step(batch)["loss"], loss)
    step.to("meta")
    on_meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if corrective_clicks:
        with pytest.raises(NotImplementedError, match="meta") as failed:
            step(on_meta)
        assert failed.traceback[-1].name == "_click_loss" and ".cpu()" in str(failed.traceback[-1].statement)
    else:
        loss = step(on_meta)["loss"]
        assert loss.device.type == "meta" and loss.shape == () and loss.requires_grad


# ------------------------------------------------------------------ learning, per strategy


@pytest.mark.parametrize("method, method_config", [
    ("lora", {}), ("full", {}), ("decoder", {}), ("decoder", {"head": "multiclass"}), ("depth3d", {"depth": 3}),
], ids=["lora", "full", "decoder-sam", "decoder-multiclass", "depth3d"])
def test_each_strategy_learns(tmp_path, monkeypatch, method, method_config):
    from samliver.models.sam import SamSegmenter

    encode, trained_encodes = SamSegmenter.encode, []

    def counting(self, pixels):
        if torch.is_grad_enabled() and pixels.device.type != "meta":     # not the strategies' shape probe
            trained_encodes.append(pixels.shape[0])
        return encode(self, pixels)

    monkeypatch.setattr(SamSegmenter, "encode", counting)
    result = run(small(tmp_path / "run", method=method, method_config=method_config, max_steps=30,
                       eval_every=0, checkpoint_every=0, eval_at_start=True))
    losses, vals = metrics(result.run_dir)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    assert [v["step"] for v in vals] == [0, 30] and vals[1]["val/score"] > vals[0]["val/score"] + 0.02
    frozen = result.info["precomputed_embeddings"]
    head = method_config.get("head") == "multiclass"
    assert frozen == (method == "decoder") and result.info["step_kind"] == ("head" if head else "prompted")
    assert (not trained_encodes) == frozen      # a frozen encoder never runs with gradients: embeddings are precomputed


# ------------------------------------------------------------------ run folder, export


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_run")
    checkpoint = random_checkpoint(tmp / "base.safetensors")
    result = run(small(tmp / "run", checkpoint=str(checkpoint), eval_every=0, final_test=True))
    return result, checkpoint


def test_run_folder_holds_run_json_checkpoints_and_the_adapter(lora_run):
    result, checkpoint = lora_run
    folder = result.run_dir
    info = json.loads((folder / "run.json").read_text())
    assert info["config"]["method"] == "lora" and info["config"]["max_steps"] == 6 and info["num_processes"] == 1
    assert info["samliver_version"] == samliver.__version__ and info["status"] == "finished"
    from samliver.weights_store import sha256_file

    assert info["base_checkpoint_sha256"] == sha256_file(checkpoint)
    assert set(info["data"]) >= {"train", "val", "test", "phantom_version"} and not set(info["data"]["test"]) & set(
        info["data"]["train"] + info["data"]["val"])
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best", "step_000003", "step_000006"]
    assert {"adapter_model.safetensors", "adapter_config.json", "report.md", "metrics.jsonl"} <= {
        p.name for p in folder.iterdir()}
    assert set(info["test"]) >= {"zero_shot", "adapted"} and "zero-shot" in (folder / "report.md").read_text()
    assert json.loads((folder / "adapter_config.json").read_text())["trained_steps"] == info["best_step"] == 6


def test_exported_adapter_reproduces_the_trained_model(lora_run):
    from samliver.prompts import Prompts

    result, checkpoint = lora_run
    loaded = samliver.load_model("samliver_tiny", checkpoint=checkpoint, adapter=result.run_dir)
    trained = result.model.eval()
    pixels = torch.linspace(0, 1, 3 * 256 * 256).reshape(1, 3, 256, 256)
    prompts = Prompts(boxes=[[10, 12, 40, 50]])
    with torch.no_grad():
        outs = [m.decode(m.encode(pixels), prompts, (64, 64)).low_res_logits for m in (loaded, trained)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)


def test_export_base_writes_a_loadable_base_checkpoint(tmp_path, lora_run):
    target = tmp_path / "weights" / "tiny.safetensors"
    result = run(small(tmp_path / "run", method="full", method_config={"train_prompt_encoder": True}, max_steps=2,
                       eval_every=0, checkpoint_every=0, export_base=str(target)))
    record = json.loads(target.with_suffix(".json").read_text())
    from samliver.data import PHANTOM_VERSION

    assert record["phantom_version"] == PHANTOM_VERSION and record["training_config"]["method"] == "full"
    base = samliver.load_model("samliver_tiny", checkpoint=target)
    for (name, a), b in zip(base.sam.state_dict().items(), result.model.sam.state_dict().values()):
        assert torch.equal(a, b), name
    from samliver.training import export_base

    lora, checkpoint = lora_run
    config, _ = resolve(None, lora.info["config"])
    with pytest.raises(ConfigError, match="changes the samliver_tiny architecture"):
        export_base(config, lora.run_dir, tmp_path / "x.safetensors", lora.info)


# ------------------------------------------------------------------ resume


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    args = small(tmp_path, max_steps=12, eval_every=4, checkpoint_every=3, augment=True)
    args["prompts"] = {"corrective_clicks": 1}
    reference = run({**args, "output_dir": str(tmp_path / "uninterrupted")})   # one thread, as the subprocesses
    flags = ["--method", "lora", "--checkpoint", "random", "--data", TINY, "--test-data", TINY_TEST,
             "--max-steps", "12", "--batch-size", "2", "--lr", "1e-3", "--eval-every", "4", "--checkpoint-every", "3",
             "--log-with", "none",
             "--set", "warmup_steps=2", "--set", "eval_at_start=false", "--set", "final_test=false",
             "--set", "prompts.corrective_clicks=1", "--output-dir", str(tmp_path / "killed")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_adapter.py"), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step_000003"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (tmp_path / "killed" / "adapter_model.safetensors").exists()
    resumed = cli(*flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "checkpoints/step_000012/model.safetensors"):
        a, b = load_file(str(reference.run_dir / name)), load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert metrics(reference.run_dir) == metrics(tmp_path / "killed")


# ------------------------------------------------------------------ several processes


def test_two_processes_over_gloo(tmp_path):
    flags = ["--method", "lora", "--checkpoint", "random", "--data", TINY, "--test-data", TINY_TEST, "--max-steps", "4",
             "--batch-size", "2", "--eval-every", "2", "--checkpoint-every", "2", "--log-with", "none",
             "--set", "debug_batches=true", "--set", "final_test=true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2"]
    launched = subprocess.run([*launcher, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               str(ROOT / "train_adapter.py"), *flags, "--output-dir", str(tmp_path / "two")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = tmp_path / "two"
    info = json.loads((two / "run.json").read_text())
    assert info["num_processes"] == 2 and info["distributed_type"] == "DistributedType.MULTI_CPU"
    digests = info["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    batches = [json.loads(x) for x in (two / "batches.jsonl").read_text().splitlines()]
    for step in range(1, 5):
        ranks = {b["rank"]: list(zip(b["cases"], b["slices"])) for b in batches if b["step"] == step}
        assert set(ranks) == {0, 1} and ranks[0] != ranks[1]
    one = run(small(tmp_path / "one", max_steps=4, eval_every=2, checkpoint_every=2, eval_at_start=True,
                    final_test=True, debug_batches=True)).run_dir

    def files(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if "random_states" not in p.name}

    assert files(one) == files(two)


# ------------------------------------------------------------------ bad input


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def fails(*args: str) -> str:
        assert main([*args, "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("train_adapter.py: error: ")
        return err

    assert "registered: decoder, depth3d, full, lora" in fails("--method", "lorra")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("method: lora\nmax-step: 3\n")
    assert "did you mean 'max_steps'?" in fails("--config", str(bad_yaml))
    assert "no such dataset folder" in fails("--checkpoint", "random", "--data", str(tmp_path / "missing"))
    monkeypatch.setattr("samliver.weights_store.search_dirs", lambda: [tmp_path])
    assert "samliver_tiny.safetensors" in fails("--method", "lora")           # no bundled weights: no silent random
    from samliver.adapters import apply_strategy, save_adapter

    other = apply_strategy(samliver.load_model("samliver_tiny", checkpoint="random"), "lora", {})
    other.checkpoint_sha256 = "0" * 64
    save_adapter(other, tmp_path / "other_base")
    assert "adapter was trained on base checkpoint sha256 000" in fails(
        "--checkpoint", "random", "--adapter", str(tmp_path / "other_base"))
    assert not (tmp_path / "out").exists()


def test_command_line_errors_have_no_traceback_unless_debug():
    plain = cli("--method", "lorra")
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "did you mean 'lora'" in plain.stderr
    debug = cli("--method", "lorra", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr
