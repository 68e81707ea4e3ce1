"""PNG figures of a `summarize` result: throughput, speedup against the ideal line, efficiency.

matplotlib is optional (``pip install 'tinyfold-ray[plot]'``). The figures are drawn on matplotlib's
object API with the Agg canvas, never pyplot, so plotting changes no global state of a notebook.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tinyfold_ray.errors import TinyFoldError
from tinyfold_ray.results.schema import PHASE_COLUMNS
from tinyfold_ray.results.summary import BREAKDOWN, THROUGHPUT
from tinyfold_ray.results.tables import PHASE_NAMES, phase_means

__all__ = ["CAPTIONS", "render_plots", "require_matplotlib", "write_plots"]

INSTALL_HINT = "pip install matplotlib (or pip install 'tinyfold-ray[plot]')"

CAPTIONS = {
    "throughput.png": "Throughput in samples/s against the worker count, one line per group: the mean over "
    "repeats, bars ± one standard deviation; red rings mark noisy points (one repeat, or a spread above "
    "the cv threshold).",
    "speedup.png": "Speedup over each group's baseline (its smallest worker count), one line per group; "
    "dashed: ideal (N / N_baseline).",
    "efficiency.png": "Scaling efficiency (speedup / (N / N_baseline)) against the worker count, one line "
    "per group; dashed: ideal, 100 %.",
    "efficiency_nodes.png": "Inter-node efficiency against the node count at equal workers per node, one "
    "line per group and workers per node; dashed: ideal, 100 %.",
    "breakdown.png": "Where a step's time goes, per group and worker count: compute, exposed all-reduce, "
    "optimizer and the rest of the median step (grey), in ms; medians over repeats, so the parts need "
    "not add up exactly to the step.",
    "phases.png": "Where a trial's wall time goes, per study and worker count: start-up, build, warm-up, "
    "the measured steps (dark), what runs after them and teardown, in seconds (means over the trials); "
    "the label gives the measured steps' share of the wall time.",
}
"""What each figure of `render_plots` shows, in a sentence (the HTML report's captions)."""


def require_matplotlib() -> None:
    """Raise a one-line `TinyFoldError` saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise TinyFoldError(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}") from exc


def render_plots(
    summary: pd.DataFrame, dpi: int = 120, trials: pd.DataFrame | None = None
) -> dict[str, bytes]:
    """File name -> PNG bytes: throughput.png, speedup.png, efficiency.png, efficiency_nodes.png when
    the summary has inter-node efficiencies, breakdown.png (stacked time per step) when it has the
    time breakdown columns, and phases.png (a trial's wall time by phase) when `trials`, the trials
    table the summary was made from, recorded phase times. One line per group; ``dpi`` sets the pixels
    (6.4 in wide figures)."""
    require_matplotlib()
    figures = {
        "throughput.png": _throughput(summary),
        "speedup.png": _speedup(summary),
        "efficiency.png": _efficiency(summary),
    }
    if summary["efficiency_inter_node"].notna().any():
        figures["efficiency_nodes.png"] = _efficiency_nodes(summary)
    if _has_breakdown(summary):
        figures["breakdown.png"] = _breakdown(summary)
    means = phase_means(trials) if trials is not None else None
    if means is not None and not means.empty:
        figures["phases.png"] = _phases(means)
    assert figures.keys() <= CAPTIONS.keys(), "every figure needs its caption"
    return {name: _png(fig, dpi) for name, fig in figures.items()}


def write_plots(
    summary: pd.DataFrame, out_dir: str | os.PathLike, trials: pd.DataFrame | None = None
) -> list[Path]:
    """Write `render_plots` into a local directory; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in render_plots(summary, trials=trials).items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    return paths


def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _axes(summary: pd.DataFrame, title: str, ylabel: str, xlabel: str = "workers") -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    studies = ", ".join(sorted(set(summary["study"].dropna().astype(str)) - {""}))
    ax.set_title(f"{title}: {studies}" if studies else title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _worker_axis(ax: Any, xs: pd.Series) -> None:
    """Log2 worker axis (ticks at the measured counts) when the counts span a factor of 4 or more."""
    ticks = sorted({int(x) for x in xs.dropna() if x > 0})
    if ticks and ticks[-1] / ticks[0] >= 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    ax.set_xticks([], minor=True)


def _lines(
    ax: Any, summary: pd.DataFrame, x: str, y: str, scale: float = 1.0, yerr: str | None = None
) -> None:
    """One line per group; noisy points get an open red ring."""
    for label, g in summary.groupby("group", sort=False):
        g = g[g[y].notna()].sort_values([x, "num_nodes"])
        if g.empty:
            continue
        err = g[yerr].fillna(0) * scale if yerr else None
        ax.errorbar(g[x], g[y] * scale, yerr=err, marker="o", capsize=3, label=str(label))
    noisy = summary[summary["noisy"] & summary[y].notna()]
    if not noisy.empty:
        ax.scatter(
            noisy[x], noisy[y] * scale, s=140, facecolors="none", edgecolors="red", label="noisy", zorder=3
        )
    ax.legend(fontsize="small")


def _throughput(summary: pd.DataFrame) -> Any:
    fig, ax = _axes(summary, "Throughput", "samples/s (mean ± std over repeats)")
    _lines(ax, summary, "num_workers", f"{THROUGHPUT}_mean", yerr=f"{THROUGHPUT}_std")
    ax.set_ylim(bottom=0)
    _worker_axis(ax, summary["num_workers"])
    return fig


def _speedup(summary: pd.DataFrame) -> Any:
    fig, ax = _axes(summary, "Speedup", "speedup over the baseline")
    for i, (base, g) in enumerate(summary.dropna(subset=["baseline_workers"]).groupby("baseline_workers")):
        xs = sorted({int(x) for x in g["num_workers"].dropna()})
        ideal = [x / base for x in xs]
        ax.plot(xs, ideal, linestyle="--", color="black", linewidth=1, label="ideal" if i == 0 else None)
    _lines(ax, summary, "num_workers", "speedup")
    _worker_axis(ax, summary["num_workers"])
    return fig


def _efficiency(summary: pd.DataFrame) -> Any:
    fig, ax = _axes(summary, "Scaling efficiency", "efficiency (%)")
    ax.axhline(100, linestyle="--", color="black", linewidth=1, label="ideal")
    _lines(ax, summary, "num_workers", "efficiency", scale=100)
    ax.set_ylim(0, max(110, ax.get_ylim()[1]))
    _worker_axis(ax, summary["num_workers"])
    return fig


def _efficiency_nodes(summary: pd.DataFrame) -> Any:
    fig, ax = _axes(summary, "Inter-node efficiency", "efficiency (%) at equal workers per node", "nodes")
    ax.axhline(100, linestyle="--", color="black", linewidth=1, label="ideal")
    rows = summary[summary["efficiency_inter_node"].notna()].copy()
    rows["group"] = rows["group"].astype(str) + ", " + rows["workers_per_node"].astype(str) + "/node"
    _lines(ax, rows, "num_nodes", "efficiency_inter_node", scale=100)
    ax.set_ylim(0, max(110, ax.get_ylim()[1]))
    _worker_axis(ax, rows["num_nodes"])
    return fig


# The stacked parts of a step: what is left of the median step after them is drawn as "other".
_STACK = (("compute", "compute"), ("comm_exposed", "exposed all-reduce"), ("optimizer", "optimizer"))


def _has_breakdown(summary: pd.DataFrame) -> bool:
    cols = [BREAKDOWN[part] for part, _ in _STACK]
    return all(c in summary.columns for c in cols) and bool(summary[cols].notna().any(axis=None))


def _breakdown(summary: pd.DataFrame) -> Any:
    """Stacked bars per group and worker count: compute, exposed all-reduce, optimiser and the rest of
    the median step, in ms (medians over repeats, so the parts need not add up exactly to the step)."""
    rows = summary[summary["step_time_median_s"].notna()]
    fig, ax = _axes(rows, "Time per step", "ms (median over repeats)", xlabel="group, workers")
    labels = [f"{g}\nN={int(n)}" for g, n in zip(rows["group"], rows["num_workers"], strict=True)]
    xs = range(len(rows))
    bottom = pd.Series(0.0, index=rows.index)
    for part, name in _STACK:
        height = rows[BREAKDOWN[part]].fillna(0) * 1000
        ax.bar(xs, height, bottom=bottom, label=name)
        bottom += height
    other = (rows["step_time_median_s"] * 1000 - bottom).clip(lower=0)
    ax.bar(xs, other, bottom=bottom, label="other", color="lightgrey")
    ax.set_xticks(list(xs), labels=labels, fontsize="small")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars
    return fig


def _phases(means: pd.DataFrame) -> Any:
    """Horizontal stacked bars, one per (study, worker count): the mean seconds of each phase."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 1.2 + 0.45 * len(means)))
    ax = fig.subplots()
    ax.set_title("Where a trial's wall time goes")
    ax.set_xlabel("s (mean over trials)")
    labels = [f"{study} N={int(n)}\n{r['share']:.0%} measured" for (study, n), r in means.iterrows()]
    ys = range(len(means))
    left = pd.Series(0.0, index=means.index)
    for col, name in zip(PHASE_COLUMNS, PHASE_NAMES, strict=True):
        width = means[col].fillna(0).clip(lower=0)
        dark = {"color": "black"} if col == "measured_s" else {}
        ax.barh(ys, width, left=left, label=f"{name} steps" if col == "measured_s" else name, **dark)
        left += width
    ax.set_yticks(list(ys), labels=labels, fontsize="small")
    ax.invert_yaxis()  # the first study and worker count on top, as in the table
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig
