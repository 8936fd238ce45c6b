"""The slice cache, slice/stack datasets, tumour oversampling, augmentation and intensity presets."""

from __future__ import annotations

import argparse
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from samliver.cli import data_cmd
from samliver.cli.main import main
from samliver.data import Case, load_dataset, make_phantom
from samliver.data import cache as cache_mod
from samliver.data.augment import build_augment
from samliver.data.cache import CacheError, CacheSettings, open_cache, prepare_cache
from samliver.data.intensity import WINDOWS, model_pixels, window_for, window_to_uint8
from samliver.data.sampling import TumorOversampler
from samliver.data.slices import SliceDataset, collate_slices, objects_from_label
from samliver.errors import DatasetError, SamliverError
from samliver.models.base import PromptableSegmenter, window_to_rgb
from samliver.models.conventions import get_convention
from samliver.registry import LIVER_WINDOW

SPEC = "phantom:tiny?n=3&seed=0"


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A uint8 liver-window cache of three tiny phantoms."""
    root = tmp_path_factory.mktemp("cache")
    return prepare_cache(load_dataset(SPEC), root, progress=False)


def _mtimes(index):
    return {c.name: (c.image_path.stat().st_mtime_ns, c.label_path.stat().st_mtime_ns) for c in index.cases.values()}


# ---------------------------------------------------------------- intensity


def test_window_presets_and_exact_window_mapping():
    assert window_for("liver") == LIVER_WINDOW == window_for(None)
    lo, hi = window_for("tumour")
    assert (lo, hi) == WINDOWS["tumor"] and hi - lo < LIVER_WINDOW[1] - LIVER_WINDOW[0]
    assert window_for("-100,200") == (-100.0, 200.0) and window_for((0, 80)) == (0.0, 80.0)
    for bad in ("bone?", "5,1", "1,2,3", (1, float("nan"))):
        with pytest.raises(ValueError):
            window_for(bad)
    hu = np.random.default_rng(0).normal(40, 200, (3, 17, 19)).astype(np.float32)
    grey = window_to_uint8(hu, "liver")
    for z in range(3):
        np.testing.assert_array_equal(grey[z], window_to_rgb(hu[z], LIVER_WINDOW)[..., 0])


@pytest.mark.parametrize("convention", ["sam", "medsam", "sam2"])
def test_model_pixels_apply_the_models_own_convention_after_the_window(cached, convention):
    """A cached slice through `model_pixels` equals ``model.preprocess(hu, window)`` on the raw HU."""
    model = SimpleNamespace(convention=get_convention(convention, 64), device=torch.device("cpu"),
                            spec=SimpleNamespace(window=LIVER_WINDOW))
    item = SliceDataset(cached)[7]
    hu = make_phantom(0, preset="tiny").image.array[item["slice"]]
    expected = PromptableSegmenter.preprocess(model, hu, LIVER_WINDOW)  # type: ignore[arg-type]
    got = model_pixels(model, item["image"])  # type: ignore[arg-type]
    assert got.shape == (1, 3, 64, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    stacks = model_pixels(model, item["image"].repeat(2, 3, 1, 1))  # (B, D, H, W) = (2, 3, 64, 64)
    assert stacks.shape == (2, 3, 3, 64, 64)  # (B, D, 3, S, S)


# ---------------------------------------------------------------- cache


def test_cache_contents_match_the_cases(cached):
    assert cached.names == load_dataset(SPEC).names and cached.settings.window == LIVER_WINDOW
    for case in load_dataset(SPEC):
        entry = open_cache(cached.root)[case.name]
        assert entry.image.dtype == np.uint8 and isinstance(entry.image, np.memmap)
        np.testing.assert_array_equal(entry.image, window_to_uint8(case.image.array, LIVER_WINDOW))
        np.testing.assert_array_equal(entry.label, case.label)
        np.testing.assert_array_equal(entry.tumor_slices, (case.label == 2).any(axis=(1, 2)))
        np.testing.assert_array_equal(entry.liver_slices, (case.label > 0).any(axis=(1, 2)))
        assert entry.spacing == pytest.approx(case.image.spacing)


def test_cache_int16_and_inplane_resampling(tmp_path):
    case = make_phantom(1, preset="tiny")
    index = prepare_cache([case], tmp_path / "hu", {"dtype": "int16", "size": 32}, progress=False)
    entry = index[case.name]
    assert entry.image.dtype == np.int16 and entry.shape == (16, 32, 32)
    assert entry.spacing == pytest.approx((case.image.spacing[0], 2 * case.image.spacing[1], 2 * case.image.spacing[2]))
    assert set(np.unique(entry.label)) <= {0, 1, 2} and entry.label.dtype == np.uint8
    # nearest-neighbour labels, linear HU: a coarse version of the original
    assert abs(float((entry.label == 1).mean()) - float((case.label == 1).mean())) < 0.02
    index = prepare_cache([case], tmp_path / "sp", {"spacing": case.image.spacing[1] * 2}, progress=False)
    assert index[case.name].shape == (16, 32, 32)
    with pytest.raises(ValueError):
        CacheSettings(spacing=1.0, size=32)


def test_cache_reuse_and_invalidation_by_settings(tmp_path):
    ds = load_dataset(SPEC)
    first = prepare_cache(ds, tmp_path, progress=False)
    assert first.built == ds.names and not first.reused
    before = _mtimes(first)
    again = prepare_cache(ds, tmp_path, progress=False)
    assert again.built == [] and again.reused == ds.names and _mtimes(again) == before
    changed = prepare_cache(ds, tmp_path, {"window": "tumor"}, progress=False)
    assert changed.built == ds.names and open_cache(tmp_path).settings.window == WINDOWS["tumor"]
    files = sorted(p.name for p in (tmp_path / "cases").iterdir())
    assert len(files) == 2 * len(ds)  # the liver-window files are gone
    assert all(c.image_path.name in files for c in changed.cases.values())


def test_cache_rebuilds_only_the_changed_source(tmp_path):
    folder = tmp_path / "ph"
    assert main(["synth", "phantom", "--n", "3", "--preset", "tiny", "--seed", "0", "-o", str(folder)]) == 0
    ds = load_dataset(folder)
    first = prepare_cache(ds, tmp_path / "c", progress=False)
    before = _mtimes(first)
    label = folder / "labels" / f"{ds.names[1]}.nii.gz"
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = prepare_cache(load_dataset(folder), tmp_path / "c", progress=False)
    assert second.built == [ds.names[1]] and second.reused == [ds.names[0], ds.names[2]]
    after = _mtimes(second)
    assert after[ds.names[0]] == before[ds.names[0]] and after[ds.names[2]] == before[ds.names[2]]
    # in-memory cases are fingerprinted by content
    cases = [make_phantom(s, preset="tiny") for s in (4, 5)]
    prepare_cache(cases, tmp_path / "m", progress=False)
    cases[0].label[cases[0].label == 2] = 1
    third = prepare_cache(cases, tmp_path / "m", progress=False)
    assert third.built == [cases[0].name] and third.reused == [cases[1].name]
    assert not open_cache(tmp_path / "m")[cases[0].name].tumor_slices.any()


def test_interrupted_prepare_leaves_a_consistent_cache(tmp_path, monkeypatch):
    ds = load_dataset(SPEC)
    real, calls = cache_mod._build, []

    def flaky(case, *args, **kwargs):
        calls.append(case.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(case, *args, **kwargs)

    monkeypatch.setattr(cache_mod, "_build", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(ds, tmp_path, progress=False)
    partial = open_cache(tmp_path)
    assert partial.names == ds.names[:2]
    assert all(c.image_path.is_file() and c.label_path.is_file() for c in partial.cases.values())
    monkeypatch.setattr(cache_mod, "_build", real)
    done = prepare_cache(ds, tmp_path, progress=False)
    assert done.built == ds.names[2:] and done.reused == ds.names[:2]


def test_unreadable_cases_are_skipped_unless_strict(tmp_path):
    class Flaky(list):
        def __getitem__(self, i):
            if i == 1:
                raise DatasetError("case 1: broken file")
            return list.__getitem__(self, i)

    cases = Flaky([make_phantom(s, preset="tiny") for s in range(3)])
    index = prepare_cache(cases, tmp_path / "a", progress=False)
    assert len(index) == 2 and list(index.skipped) == ["1"] and "broken" in index.skipped["1"]
    with pytest.raises(CacheError, match="broken"):
        prepare_cache(cases, tmp_path / "b", strict=True, progress=False)
    with pytest.raises(CacheError, match="not a samliver cache"):
        open_cache(tmp_path / "nowhere")


# ---------------------------------------------------------------- datasets


def test_stacks_hold_the_right_neighbours_with_edges_repeated(cached):
    sd = SliceDataset(cached, stack_depth=5)
    entry = cached[cached.names[0]]
    z_max = entry.shape[0] - 1
    assert len(sd) == sum(c.shape[0] for c in cached.cases.values())
    for i, expected in ((0, [0, 0, 0, 1, 2]), (1, [0, 0, 1, 2, 3]), (7, [5, 6, 7, 8, 9]),
                        (z_max, [z_max - 2, z_max - 1, z_max, z_max, z_max])):
        item = sd[i]
        assert item["slice"] == i and item["image"].shape == (5, 64, 64)
        np.testing.assert_array_equal(sd.stack_indices(i), expected)
        np.testing.assert_array_equal(item["image"].numpy(), entry.image[expected].astype(np.float32) / 255)
    flat = SliceDataset(cached, case_names=[cached.names[1]])
    assert flat[3]["image"].shape == (1, 64, 64) and flat[3]["case"] == cached.names[1]
    with pytest.raises(ValueError):
        SliceDataset(cached, stack_depth=2)
    with pytest.raises(ValueError, match="int16"):
        SliceDataset(cached, window="tumor")


def test_objects_are_the_liver_and_each_tumour_component(cached):
    sd = SliceDataset(cached)
    seen_multi = False
    for i in range(len(sd)):
        item = sd[i]
        label = item["label"].numpy()
        masks, labels = item["objects"].numpy(), item["object_labels"].numpy()
        comps, n = ndimage.label(label == 2, structure=np.ones((3, 3)))
        assert len(labels) == int((label > 0).any()) + n
        if (label > 0).any():
            assert labels[0] == 1 and np.array_equal(masks[0], label > 0)
        assert list(labels[1:]) == [2] * n and all(m.any() for m in masks)
        for k in range(n):
            assert any(np.array_equal(m, comps == k + 1) for m in masks[1:])
        painted = np.zeros_like(label)
        for m, lab in zip(masks, labels):
            painted[m] = lab
        np.testing.assert_array_equal(painted, label)
        seen_multi |= n >= 1
    assert seen_multi
    tumour_only = SliceDataset(cached, targets=("tumour",))
    for i in np.flatnonzero(tumour_only.liver_flags)[:10]:
        item = tumour_only[int(i)]
        assert set(item["label"].unique().tolist()) <= {0, 2} and (item["object_labels"] == 2).all()


def test_objects_are_eight_connected():
    label = np.zeros((8, 8), np.uint8)
    label[1, 1] = label[2, 2] = 2  # diagonal neighbours: one component
    label[5:7, 5:7] = 2
    masks, labels = objects_from_label(label, liver=False)
    assert labels.tolist() == [2, 2] and masks.sum(axis=(1, 2)).tolist() == [2, 4]
    assert objects_from_label(label, liver=False, min_pixels=3)[1].tolist() == [2]


def test_datasets_without_liver_give_tumour_objects_only(tmp_path):
    case = make_phantom(2, preset="tiny")
    tumour_only = Case(case.name, case.image, np.where(case.label == 2, 2, 0).astype(np.uint8), has_liver=False)
    index = prepare_cache([tumour_only], tmp_path, progress=False)
    assert not index[case.name].liver_slices.any() and index[case.name].tumor_slices.any()
    sd = SliceDataset(index)
    assert not sd.liver_flags.any()
    labels = [sd[i]["object_labels"] for i in range(len(sd))]
    assert sum(len(x) for x in labels) > 0 and all((x == 2).all() for x in labels)


def test_collate_pads_objects_for_a_dataloader(cached):
    sd = SliceDataset(cached, stack_depth=3)
    batch = next(iter(DataLoader(sd, batch_size=6, shuffle=False, collate_fn=collate_slices)))
    n = batch["num_objects"]
    assert batch["image"].shape == (6, 3, 64, 64) and batch["label"].shape == (6, 64, 64)
    assert batch["objects"].shape[:2] == batch["object_labels"].shape == batch["object_valid"].shape
    for b in range(6):
        assert batch["object_valid"][b].sum() == n[b] and not batch["objects"][b, n[b]:].any()
        assert (batch["object_labels"][b, n[b]:] == 0).all()
    assert batch["case"] == [cached.names[0]] * 6 and batch["slice"].tolist() == list(range(6))
    assert batch["spacing"].shape == (6, 3)


# ---------------------------------------------------------------- sampling


def test_sampler_oversamples_tumour_slices_at_the_configured_ratio():
    flags = np.zeros(1000, bool)
    flags[::20] = True  # natural fraction 5%
    for fraction in (0.5, 0.25):
        sampler = TumorOversampler(flags, tumor_fraction=fraction, num_samples=20000, seed=3)
        draws = np.fromiter(sampler, int)
        assert sampler.natural_fraction == pytest.approx(0.05)
        assert abs(flags[draws].mean() - fraction) < 0.015
    uniform = np.fromiter(TumorOversampler(flags, tumor_fraction=None, num_samples=20000), int)
    assert abs(flags[uniform].mean() - 0.05) < 0.01


def test_sampler_is_deterministic_per_seed_and_epoch_and_disjoint_across_ranks(cached):
    sd = SliceDataset(cached)
    a, b = TumorOversampler(sd, seed=1), TumorOversampler(sd, seed=1)
    assert list(a) == list(b) and len(list(a)) == len(sd)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(TumorOversampler(sd, seed=2)) != first
    ranks = [TumorOversampler(sd, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    shards = [set(np.concatenate(s.shard()).tolist()) for s in ranks]
    assert shards[0].isdisjoint(shards[1]) and shards[1].isdisjoint(shards[2]) and shards[0].isdisjoint(shards[2])
    assert set().union(*shards) == set(range(len(sd)))
    draws = [set(s) for s in ranks]
    assert all(d <= sh for d, sh in zip(draws, shards)) and len(ranks[0]) == -(-len(sd) // 3)


# ---------------------------------------------------------------- augmentation


def _square_sample(size: int = 48):
    image = torch.zeros(1, size, size)
    label = torch.zeros(size, size, dtype=torch.long)
    image[0, 10:30, 14:22] = 1.0
    label[10:30, 14:22] = 2
    objects = (label == 2)[None].clone()
    return {"image": image, "label": label, "objects": objects, "case": "x"}


def test_flip_only_augment_flips_image_and_masks_exactly():
    sample = _square_sample()
    sample["image"] = torch.rand(1, 48, 48)
    out = build_augment({"flip": {"prob": 1.0, "axes": [1]}})(sample)
    torch.testing.assert_close(out["image"], sample["image"].flip(-1))
    assert torch.equal(out["label"], sample["label"].flip(-1)) and torch.equal(out["objects"], sample["objects"].flip(-1))
    assert out["case"] == "x" and out["label"].dtype == torch.long and out["objects"].dtype == torch.bool


def test_geometric_augment_keeps_masks_aligned_with_the_image():
    """A bright square and its mask move together (centroids within half a pixel, no row/column shift)."""
    grid = torch.stack(torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij"))
    for config in ({"rotate": {"prob": 1.0, "degrees": 40}}, {"zoom": {"prob": 1.0, "min": 0.6, "max": 1.4}},
                   {"elastic": {"prob": 1.0, "spacing": 12, "magnitude": [2, 3]}}):
        for seed in range(3):
            out = build_augment({**config, "seed": seed})(_square_sample())
            mask, image = out["label"] == 2, out["image"][0]
            assert mask.any() and torch.equal(out["objects"][0], mask)
            assert not torch.equal(mask, _square_sample()["label"] == 2), config  # it did move
            assert image[mask].mean() > 0.9 and image[~mask].mean() < 0.05, config
            centre_image = (grid * image).flatten(1).sum(1) / image.sum()
            centre_mask = (grid * mask).flatten(1).sum(1) / mask.sum()
            assert torch.allclose(centre_image, centre_mask, atol=0.5), (config, centre_image, centre_mask)


def test_augment_is_seeded_and_validates_its_config():
    sample = _square_sample()
    one = build_augment({"rotate": {"prob": 1.0}, "noise": {"prob": 1.0}, "seed": 7})
    two = build_augment({"rotate": {"prob": 1.0}, "noise": {"prob": 1.0}, "seed": 7})
    a, b = one(sample), two(sample)
    torch.testing.assert_close(a["image"], b["image"])
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    one.set_random_state(7)
    torch.testing.assert_close(one(sample)["image"], a["image"])
    with pytest.raises(ValueError, match="shear"):
        build_augment({"shear": {}})
    with pytest.raises(ValueError, match="rotate.angle"):
        build_augment({"rotate": {"angle": 3}})
    assert set(build_augment(None).params) == {"flip", "rotate", "zoom", "elastic", "shift", "noise"}


def test_items_without_objects_are_the_same_slices_and_labels(cached):
    """``with_objects=False`` (the box U-Net's items) draws the same augmentation and leaves MONAI's global
    MetaTensor tracking as it was."""
    from monai.data import get_track_meta

    with_objects = SliceDataset(cached, stack_depth=3, augment=build_augment({"seed": 0}))
    without = SliceDataset(cached, stack_depth=3, augment=build_augment({"seed": 0}), with_objects=False)
    for index in (0, 5, len(without) - 1):
        with_objects.augment.set_random_state(index)
        without.augment.set_random_state(index)
        a, b = with_objects[index], without[index]
        assert "objects" not in b and "object_labels" not in b and "objects" in a
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        assert torch.equal(a["label"], b["label"]) and type(b["image"]) is torch.Tensor
    assert get_track_meta()


def test_dataset_with_default_augment_in_dataloader_workers(cached):
    sd = SliceDataset(cached, stack_depth=3, augment=build_augment({"seed": 0}))
    loader = DataLoader(sd, batch_size=4, sampler=TumorOversampler(sd, num_samples=8), num_workers=2,
                        collate_fn=collate_slices)
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 64, 64) and type(batch["image"]) is torch.Tensor
        for b in range(batch["image"].shape[0]):
            n = int(batch["num_objects"][b])
            assert batch["objects"][b, :n].flatten(1).any(1).all()


# ---------------------------------------------------------------- CLI


def _run_data(argv):
    parser = argparse.ArgumentParser()
    data_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_cli_prepare_builds_then_reuses(tmp_path, capsys):
    out = tmp_path / "cache"
    assert _run_data(["prepare", "phantom:tiny?n=2", "--out", str(out), "--size", "32", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "2 built, 0 reused, 0 skipped" in text and "size 32 px" in text
    assert _run_data(["prepare", "phantom:tiny?n=2", "--out", str(out), "--size", "32", "--quiet"]) == 0
    assert "0 built, 2 reused" in capsys.readouterr().out
    assert open_cache(out)[load_dataset("phantom:tiny?n=2").names[0]].shape == (16, 32, 32)
    # other settings would rebuild every case: refused unless --force
    with pytest.raises(SamliverError, match="holds a cache built with other settings"):
        _run_data(["prepare", "phantom:tiny?n=2", "--out", str(out), "--window=-100,200", "--quiet"])
    assert _run_data(["prepare", "phantom:tiny?n=2", "--out", str(out), "--window=-100,200", "--quiet", "--force"]) == 0
    assert json.loads((out / "index.json").read_text())["settings"]["window"] == [-100.0, 200.0]


def test_cli_prepare_reports_skipped_cases(tmp_path, capsys):
    folder = tmp_path / "ph"
    assert main(["synth", "phantom", "--n", "2", "--preset", "tiny", "-o", str(folder)]) == 0
    next((folder / "labels").iterdir()).unlink()
    capsys.readouterr()
    assert _run_data(["prepare", str(folder), "--out", str(tmp_path / "c"), "--quiet"]) == 1
    assert "1 built, 0 reused, 1 skipped" in capsys.readouterr().out
    assert main(["data", "prepare", str(folder), "--out", str(tmp_path / "d"), "--strict", "--quiet"]) == 2
    assert main(["data", "prepare", "phantom:tiny?n=1", "--out", str(tmp_path / "e"), "--window", "bone?"]) == 2
    assert "--window bone?" in capsys.readouterr().err

