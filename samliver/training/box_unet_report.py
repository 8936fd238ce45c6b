"""The box U-Net run's measurements and write-ups: box recall on held-out cases (`held_out_test`), the
training record kept in the exported JSON (`training_record`) and the run folder's ``report.md`` (`report`)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from samliver.data import load_dataset
from samliver.prompts.component_boxes import box_recall, boxes_from_probabilities
from samliver.prompts.unet_boxes import UNetBoxGenerator

from .box_unet_config import BoxUNetTrainConfig
from .validation import dice_per_class


def held_out_test(generator: UNetBoxGenerator, spec: str,
                  sizes_mm2: Sequence[float] = (100.0, 300.0, 1000.0)) -> dict[str, Any]:
    """Box recall and precision (`box_recall`, at the generator's own parameters) and 3D Dice of the U-Net's
    argmax, on the original grid of each case of dataset ``spec``; recall pooled over all objects, for objects
    of at least the generator's ``min_area_mm2`` and, in ``recall_by_size``, of at least each of ``sizes_mm2``."""
    dataset = load_dataset(spec)
    minima = [generator.min_area_mm2, *[float(s) for s in sizes_mm2 if s > generator.min_area_mm2]]
    pooled = {(c, m): {"objects": 0, "found": 0, "boxes": 0, "hits": 0} for c in ("liver", "tumor") for m in minima}
    cases = {}
    for i in range(len(dataset)):
        case = dataset[i]
        hu, spacing, label = case.image.array, case.image.spacing, np.asarray(case.label)
        probs = generator.probabilities(hu)
        prompts = boxes_from_probabilities(probs, spacing, **generator.box_params)    # = generator(hu, spacing)
        for minimum in minima:
            found = box_recall(prompts, label, spacing, min_area_mm2=minimum, margin_mm=generator.margin_mm)
            for cls, row in found.items():
                total = pooled[cls, minimum]
                for key, name in (("objects", "objects"), ("found", "found"), ("boxes", "boxes"),
                                  ("hits", "true_boxes")):
                    total[key] += row[name]
            if minimum == generator.min_area_mm2:
                dice = dice_per_class(probs.argmax(1).astype(np.uint8), label)
                cases[case.name] = {"dice": [None if math.isnan(d) else round(d, 4) for d in dice], **found}

    def summary(p: dict[str, int]) -> dict[str, Any]:
        return {"objects": p["objects"], "recall": p["found"] / p["objects"] if p["objects"] else None,
                "boxes": p["boxes"], "precision": p["hits"] / p["boxes"] if p["boxes"] else None}

    by_size = {f">={m:g}mm2": {c: summary(pooled[c, m])["recall"] for c in ("liver", "tumor")} for m in minima}
    return {"data": spec, "box_params": generator.settings, "recall_rule": "box holds >= 90 % of the object's "
            "pixels and its IoU with the object's tight box grown by margin_mm is >= 0.5; objects >= min_area_mm2",
            **{c: summary(pooled[c, generator.min_area_mm2]) for c in ("liver", "tumor")},
            "recall_by_size": by_size, "cases": cases}


def training_record(config: BoxUNetTrainConfig, info: dict[str, Any]) -> dict[str, Any]:
    """What the exported JSON says about how the U-Net was made."""
    from samliver.data.generated import parse_phantom_spec

    def seeds(spec: str | None) -> list[int] | None:
        if not spec or not spec.startswith("phantom"):
            return None
        _, n, first = parse_phantom_spec(spec)
        return None if n is None else [first, first + n - 1]

    return {"data": config.data, "data_seed_range": seeds(config.data), "test_data": config.test_data,
            "test_seed_range": seeds(config.test_data), "split": info["data"],
            "steps": info.get("steps"), "best_step": info.get("best_step"),
            "best_val_score": info.get("best_val_score"), "validation": info.get("validation"),
            "held_out": {k: v for k, v in (info.get("test") or {}).items() if k != "cases"} or None,
            "config": config.to_dict(), "samliver_version": info.get("samliver_version"),
            "torch": info.get("torch"), "monai": info.get("monai"), "train_slices": info.get("train_slices"),
            "init": info.get("init")}


def recall_table(test: dict[str, Any]) -> str:
    lines = [f"held-out {test['data']}: box recall / precision ({test['box_params']})"]
    for cls in ("liver", "tumor"):
        r = test[cls]
        lines.append(f"  {cls:<6} {r['objects']:4d} objects  recall {fmt(r['recall'])}  "
                     f"{r['boxes']:4d} boxes  precision {fmt(r['precision'])}")
    for size, row in test.get("recall_by_size", {}).items():
        lines.append(f"  objects {size}: recall liver {fmt(row['liver'])}, tumour {fmt(row['tumor'])}")
    return "\n".join(lines)


def report(info: dict[str, Any]) -> str:
    cfg = info["config"]
    lines = ["# samliver box U-Net training run", "",
             f"- network: {info['network']} ({info['parameters']:,} parameters)",
             f"- data: `{cfg['data']}`: {len(info['data']['train'])} train / {len(info['data']['val'])} val cases "
             f"({info['train_slices']} training slices)",
             f"- {info['steps']} steps of batch {cfg['batch_size']} x {info['num_processes']} process(es), "
             f"lr {cfg['lr']} ({cfg['scheduler']}), loss {cfg['loss']}, seed {cfg['seed']}",
             f"- exported: best validation score {fmt(info.get('best_val_score'))} at step {info['best_step']}",
             "", "| step | liver Dice | tumour Dice |", "|---:|---:|---:|"]
    lines += [f"| {e['step']} | {fmt(e['val/liver_dice'])} | {fmt(e['val/tumor_dice'])} |"
              for e in info["validation"]]
    if "test" in info:
        lines += ["", "```", recall_table(info["test"]), "```"]
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


__all__ = ["fmt", "held_out_test", "recall_table", "report", "training_record"]
