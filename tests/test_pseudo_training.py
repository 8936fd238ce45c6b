"""Training on a pseudo-label folder: voxels of objects the teacher's filter rejected are never negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import samliver
from samliver.data import load_dataset, make_phantom
from samliver.io import load_label
from samliver.prompts.pseudo_labels import ConfidenceFilter, prompts_from_label, pseudo_label

pytestmark = pytest.mark.usefixtures("one_thread")


def test_slices_with_rejected_objects_give_no_training_item(tmp_path):
    from samliver.training.config import TrainConfig
    from samliver.training.data import build_train_loader, split_and_cache, training_slices
    from samliver.training.pseudo_data import UnlabelledCase, write_labelled, write_pseudo

    torch.manual_seed(0)
    model = samliver.load_model("samliver_tiny", checkpoint="random").eval()
    unlabelled = make_phantom(3, preset="tiny")
    prompts = prompts_from_label(unlabelled.label)
    keep_all = ConfidenceFilter(min_iou=0, min_stability=0, jitter_rounds=0, min_pixels=1, require_liver=False)
    everything = pseudo_label(model, unlabelled.image, prompts, settings=keep_all)
    # drop every tumour by size (the random teacher's masks are big), keep the livers larger than all of them
    tumours = [o.pixels for o in everything.objects if o.label == 2]
    assert tumours and max(tumours) < max(o.pixels for o in everything.objects if o.label == 1)
    strict = ConfidenceFilter(min_iou=0, min_stability=0, jitter_rounds=0, min_pixels=max(tumours) + 1,
                              require_liver=False)

    labelled = load_dataset("phantom:tiny?n=1&seed=0")
    write_labelled(labelled, {"train": labelled.names, "val": [], "test": []}, tmp_path / "labelled")
    folder = tmp_path / "pseudo"
    write_pseudo(tmp_path / "labelled", [UnlabelledCase("unlabelled-3", lambda: (unlabelled.image, None))], folder,
                 lambda ct, name, index: pseudo_label(model, ct, prompts, settings=strict))

    # the defect's setting: uncertain voxels on liver slices, written as 0 / 1 in labels/
    uncertain = load_label(folder / "uncertain" / "unlabelled-3.nii.gz").astype(bool)
    label = load_label(folder / "labels" / "unlabelled-3.nii.gz")
    unsure = set(np.flatnonzero(uncertain.any(axis=(1, 2))).tolist())
    liver = set(np.flatnonzero((label >= 1).any(axis=(1, 2))).tolist())
    assert unsure & liver and set(np.unique(label[uncertain])) <= {0, 1}
    assert (unlabelled.label[uncertain] == 2).any()          # truly tumour voxels there, labelled 0 / 1
    certain_liver = liver - unsure
    assert certain_liver                                     # the case still contributes slices

    config = TrainConfig(method="lora", checkpoint="random", data=str(folder), split_file=str(folder / "split.json"),
                         test_data=None, augment=False, batch_size=4, log_with=None, cache_dir=str(tmp_path / "cache"))
    split = split_and_cache(config, tmp_path / "cache", True, lambda: None)
    assert sorted(split.train) == sorted([*labelled.names, "unlabelled-3"])
    for kind, expected in (("prompted", certain_liver), ("head", set(range(label.shape[0])) - unsure)):
        logged: list[str] = []
        data = build_train_loader(config, split, model, kind, False, 1, logged.append)
        slices = data.loader.dataset.slices
        before = training_slices(slices, kind, slices.targets)
        dropped = {slices.locate(i)[1] for i in before if slices.locate(i)[0] == "unlabelled-3"} & unsure
        assert dropped and any(f"left out {len(dropped)} training slices" in line for line in logged)
        allowed = {slices.locate(int(i)) for i in data.sampler.indices}
        assert {z for name, z in allowed if name == "unlabelled-3"} == expected
        seen = []
        for batch in data.loader:                            # the items training actually gets
            seen += list(zip(batch["case"], batch["slice"].tolist()))
            for b, (name, z) in enumerate(zip(batch["case"], batch["slice"].tolist())):
                if name == "unlabelled-3":
                    expected_label = torch.from_numpy(label[z].astype(np.int64))
                    assert z not in unsure and torch.equal(batch["label"][b], expected_label)
        assert len(seen) == data.steps_per_epoch * 4 and set(seen) <= allowed
        assert any(name == "unlabelled-3" for name, _ in seen) and any(name != "unlabelled-3" for name, _ in seen)


def test_student_prompts_take_the_liver_with_its_tumours_as_one_object():
    from samliver.prompts.pseudo_labels import student_prompts

    label = np.zeros((40, 50), np.uint8)
    label[10:30, 10:30] = 1
    label[12:20, 30:38] = 2             # a tumour at the liver's edge, reaching 8 px beyond it
    label[5:35, 40:44] = 1
    label[18:22, 40:44] = 2             # a tumour cutting a second liver piece in two
    label[1, 1] = 1                     # a speck: removed before boxes are made
    boxes, clicks = student_prompts(label, min_pixels=5)
    assert boxes.labels.tolist() == [1, 2, 2] and clicks.labels.tolist() == [1, 2, 2]
    assert boxes.boxes.tolist() == [[10, 5, 44, 35], [30, 12, 38, 20], [40, 18, 44, 22]]   # x0, y0, x1, y1
    without_speck = label.copy()
    without_speck[1, 1] = 0             # the same as the teacher's and training's rule on the clean map
    rule = prompts_from_label(without_speck[None])[0]
    assert np.array_equal(boxes.boxes, rule.boxes) and np.array_equal(boxes.labels, rule.labels)
    x, y = clicks.points[:, 0].astype(int).T
    assert (label[y, x] > 0)[0] and (label[y, x] == 2)[1:].all() and clicks.point_labels.tolist() == [[1]] * 3
    assert y[0] in range(10, 30) and x[0] in range(10, 30)         # the deepest piece of the liver: the big block
    assert student_prompts(label, labels=(2,), min_pixels=5)[0].labels.tolist() == [2, 2]
    assert student_prompts(np.where(label == 2, 0, label), min_pixels=500) is None
