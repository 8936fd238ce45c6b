"""Pictures of an evaluation run: box plots of Dice and NSD per prompt setting, and overlays
(CT in its window, reference and prediction contours) of the best, median and worst cases.

Uses matplotlib's object API with the Agg canvas (no global pyplot state, no display needed).
"""

from __future__ import annotations

import io
import math

import numpy as np

from samliver.atomic import write_bytes_atomic

#: contour colours: (reference, prediction) per class
_COLOURS = {1: ("#00d000", "#ff3030"), 2: ("#00e5ff", "#ff40ff")}
BOX_METRICS = (("dice", "Dice"), ("nsd", "NSD"))


def _save(fig, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())


def box_plot(rows: list[dict], metric: str, title: str, settings: list[str], targets: list[str]):
    """A figure with one panel per target: ``metric`` per prompt setting over cases with a non-empty reference."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 + 1.1 * len(settings) * len(targets), 4.0), layout="constrained")
    for k, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), k + 1)
        data = [[r[metric] for r in rows if r["setting"] == s and r["target"] == target and r["ref_voxels"] > 0
                 and r.get(metric) is not None and math.isfinite(r[metric])] for s in settings]
        ax.boxplot([d if d else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(settings) + 1), settings, rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{target} (n = {max((len(d) for d in data), default=0)})")
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    return fig


def overlay_figure(overlay: dict[str, np.ndarray], settings: list[str], window: tuple[float, float],
                   spacing: list[float], title: str):
    """Rows: prompt settings; columns: the stored slices. CT in ``window``, reference contours in
    green (liver) / cyan (tumour), predictions in red (liver) / magenta (tumour)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    slices = overlay["slices"]
    n_rows, n_cols = len(settings), len(slices)
    fig = Figure(figsize=(2.4 * n_cols + 0.6, 2.4 * n_rows + 0.8), layout="constrained")
    aspect = float(spacing[1]) / float(spacing[2])
    for i, setting in enumerate(settings):
        pred = overlay.get(f"pred/{setting}")
        for j, z in enumerate(slices):
            ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1)
            ax.imshow(overlay["ct"][j], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect,
                      interpolation="nearest")
            for label, (ref_colour, pred_colour) in _COLOURS.items():
                for mask, colour, style in ((overlay["reference"][j] >= label, ref_colour, "solid"),
                                            (None if pred is None else pred[j] >= label, pred_colour, "dashed")):
                    if mask is not None and mask.any() and not mask.all():
                        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0,
                                   linestyles=style)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(setting, fontsize=9)
            if i == 0:
                ax.set_title(f"slice {int(z)}", fontsize=9)
    handles = [Line2D([], [], color=c, linestyle=s, label=f"{who} {name}")
               for name, (rc, pc) in zip(("liver", "tumour"), _COLOURS.values())
               for who, c, s in (("reference", rc, "solid"), ("prediction", pc, "dashed"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def pick_cases(records: list[dict]) -> dict[str, str]:
    """``{"best": case, "median": case, "worst": case}`` by each case's mean Dice over its scored
    rows (targets × settings with a non-empty reference); fewer keys when cases coincide."""
    scores = []
    for rec in records:
        values = [r["dice"] for r in rec["rows"] if r["ref_voxels"] > 0]
        if values:
            scores.append((float(np.mean(values)), rec["case"]))
    if not scores:
        return {}
    scores.sort()
    out: dict[str, str] = {}
    for rank, index in (("best", -1), ("median", (len(scores) - 1) // 2), ("worst", 0)):
        if scores[index][1] not in out.values():
            out[rank] = scores[index][1]
    return out


def write_figures(folder, records: list[dict], settings: list[str], targets: list[str],
                  window: tuple[float, float]) -> list[str]:
    """Write the box plots and overlays into ``folder.figures``; returns their paths relative to the run folder."""
    folder.figures.mkdir(parents=True, exist_ok=True)
    rows = [r for rec in records for r in rec["rows"]]
    written = []
    for metric, title in BOX_METRICS:
        path = folder.figures / f"{metric}_boxplot.png"
        _save(box_plot(rows, metric, title, settings, targets), path)
        written.append(path)
    by_case = {rec["case"]: rec for rec in records}
    for rank, case in pick_cases(records).items():
        rec = by_case[case]
        dice = np.mean([r["dice"] for r in rec["rows"] if r["ref_voxels"] > 0])
        path = folder.figures / f"overlay_{rank}_{folder.stem(case)}.png"
        fig = overlay_figure(folder.load_overlay(case), settings, window, rec["spacing"],
                             f"{rank}: {case} (mean Dice {dice:.3f})")
        _save(fig, path)
        written.append(path)
    return [str(p.relative_to(folder.root)) for p in written]
