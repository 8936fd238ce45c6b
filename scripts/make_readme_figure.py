"""Make the README's picture, ``docs/overlay.png``: a synthetic liver-tumour phantom segmented
by samliver_tiny, liver and tumour overlaid on the CT slice.

    python scripts/make_readme_figure.py                        # the bundled samliver_tiny weights
    python scripts/make_readme_figure.py --checkpoint random    # development: random weights
    python scripts/make_readme_figure.py --prompts auto         # no prompts: Predictor.segment_auto
    python scripts/make_readme_figure.py --adapter runs/lora    # after the quick start's LoRA run

Box prompts come from the phantom's own label (one box per liver / tumour component on the
slice with the most tumour), the way `samliver evaluate` simulates a user's boxes. The title
names the model, its checkpoint and the Dice on that slice, so a picture made with random weights
says so.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {1: ("liver", (0.1, 0.85, 0.2)), 2: ("tumour", (1.0, 0.15, 0.15))}  # label -> (name, RGB)


def _box_prompts(predictor, case, z: int) -> tuple[np.ndarray, np.ndarray]:
    """``(slice labels (Y, X), boxes (N, 4) xyxy)`` from boxes around the label's components."""
    from samliver.prompts import boxes_from_mask

    prompts = boxes_from_mask(case.label[z])
    mask = predictor.segment_volume(case.image, {z: prompts})[z]
    return mask, np.asarray(prompts.boxes, float).reshape(-1, 4)


def _auto(predictor, case, z: int) -> tuple[np.ndarray, np.ndarray]:
    """No prompts: the model's default box generator (or prompt-free head) on the whole CT."""
    return predictor.segment_auto(case.image)[z], np.zeros((0, 4))


#: ``--prompts`` value -> how the slice is segmented
PROMPTERS: dict[str, Callable] = {"box": _box_prompts, "auto": _auto}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="samliver_tiny", help="model name (default samliver_tiny)")
    parser.add_argument("--checkpoint",
                        help="checkpoint file, or 'random' (default: the model's bundled/downloaded file)")
    parser.add_argument("--adapter", help="a saved adapter folder to apply (e.g. runs/lora from the quick start)")
    parser.add_argument("--prompts", choices=sorted(PROMPTERS), default="box",
                        help="box (from the label, default) or auto")
    parser.add_argument("--seed", type=int, default=2, help="phantom seed (default 2: several tumours)")
    parser.add_argument("--preset", default="liver-tumor", help="phantom preset (default liver-tumor)")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "overlay.png"), help="PNG to write")
    return parser


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def figure(hu: np.ndarray, reference: np.ndarray, mask: np.ndarray, boxes: np.ndarray,
           spacing_yx: tuple[float, float], window: tuple[float, float], title: str, model: str):
    """Two panels, reference and prediction: the slice ``hu`` ``(Y, X)`` in ``window`` (HU) with
    the labels filled half-transparent; ``boxes`` ``(N, 4)`` xyxy pixels drawn on the prediction."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    fig = Figure(figsize=(8.4, 4.6), layout="constrained")
    aspect = spacing_yx[0] / spacing_yx[1]
    for k, (labels, name) in enumerate(((reference, "reference (phantom label)"), (mask, f"{model} prediction"))):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.imshow(hu, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        rgba = np.zeros((*labels.shape, 4))
        for label, (_, colour) in COLOURS.items():
            rgba[labels == label] = (*colour, 0.45)
        ax.imshow(rgba, aspect=aspect, interpolation="nearest")
        if k == 1:
            for x0, y0, x1, y1 in boxes:
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow",
                                       linewidth=1.0))
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=c, alpha=0.6, label=n) for n, c in COLOURS.values()], loc="outside lower center",
               ncol=2, frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import samliver
    from samliver.atomic import write_bytes_atomic
    from samliver.cli.main import report_errors
    from samliver.data import make_phantom

    def run() -> int:
        case = make_phantom(args.seed, preset=args.preset)
        per_slice = (case.label == 2).sum(axis=(1, 2)) * 1_000_000 + (case.label == 1).sum(axis=(1, 2))
        z = int(np.argmax(per_slice))  # the most tumour; the most liver where there is none
        model = samliver.load_model(args.model, checkpoint=args.checkpoint, adapter=args.adapter)
        predictor = samliver.Predictor(model)
        mask, boxes = PROMPTERS[args.prompts](predictor, case, z)
        scores = ", ".join(f"{name} Dice {dice(mask == label, case.label[z] == label):.2f}"
                           for label, (name, _) in COLOURS.items() if (case.label[z] == label).any())
        weights = "random weights" if args.checkpoint == "random" else (
            Path(args.checkpoint).name if args.checkpoint else "bundled weights")
        if args.adapter:
            weights += f" + adapter {Path(args.adapter).name}"
        title = (f"{args.model} ({weights}), {args.prompts} prompts\n{case.name}, slice {z}: {scores}"
                 "\n(synthetic phantom, not a patient)")
        fig = figure(case.image.array[z], case.label[z], mask, boxes, case.image.slice_spacing_yx,
                     model.spec.window, title, args.model)
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(out, buffer.getvalue())
        print(f"wrote {out} ({scores})")
        return 0

    return report_errors("make_readme_figure.py", run)


if __name__ == "__main__":
    sys.exit(main())
