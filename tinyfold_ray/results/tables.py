"""Presentation of a `summarize` result: the per-group text and Markdown tables.

Statistics live in results/summary.py; this module only formats columns that are there, so a column
the summary does not have (an older summary, no breakdown recorded) just leaves its table column out.
The one figure computed here is presentational: how many repeats would narrow an interval that is
wider than its value (`repeats_needed`), said in words under the table.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tinyfold_ray.results.schema import PHASE_COLUMNS
from tinyfold_ray.results.summary import BREAKDOWN, THROUGHPUT, fmt_setting, latest_attempts, t_quantile_975

__all__ = [
    "REPEATS_CAP",
    "REPEATS_TARGET",
    "Table",
    "breakdown_tables",
    "fmt_int",
    "fmt_number",
    "fmt_percent",
    "fmt_ratio",
    "fmt_setting",
    "format_markdown",
    "format_table",
    "group_tables",
    "phase_means",
    "phase_tables",
    "render_markdown",
    "render_text",
    "repeats_needed",
    "wide_interval_notes",
]

REPEATS_TARGET = 0.10
"""A wide interval's note says how many repeats would bring its half-width under this share of the value."""
REPEATS_CAP = 1000
"""Beyond this many repeats the note says "more than" instead of a number."""


@dataclass(frozen=True, kw_only=True)
class Table:
    """One titled table: header cells, rows of cells, and sentences to print under it."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: tuple[str, ...] = ()


def fmt_number(x: Any, like: Any = None) -> str:
    """A throughput-like number with decimals fitting its size (or the size of ``like``, e.g. a mean)."""
    if x is None or pd.isna(x):
        return "-"
    size = abs(float(x if like is None or pd.isna(like) else like))
    decimals = 1 if size >= 100 else 2 if size >= 1 else 3 if size >= 0.1 else 4
    return f"{float(x):.{decimals}f}"


def fmt_ratio(x: Any) -> str:
    return "-" if x is None or pd.isna(x) else f"{float(x):.2f}x"


def fmt_percent(x: Any) -> str:
    return "-" if x is None or pd.isna(x) else f"{float(x) * 100:.1f} %"


def fmt_int(x: Any) -> str:
    return "-" if x is None or pd.isna(x) else str(int(x))


def _has(summary: pd.DataFrame, col: str) -> bool:
    return col in summary.columns and bool(summary[col].notna().any())


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _with_ci(value: str, half: Any, fmt: Any) -> str:
    """``value ± half``, the half-width in the value's own format, where there is one."""
    return value if half is None or pd.isna(half) else f"{value} ± {fmt(half).rstrip('x')}"


def group_tables(summary: pd.DataFrame) -> list[Table]:
    """Per group: the familiar speedup/efficiency table, titled, with `wide_interval_notes` under it.

    Speedup and efficiency carry their 95 % half-widths (``1.85x ± 0.10``) where there are any; the
    predicted efficiencies, the dominant loss and the sanity flags are columns when the summary has them;
    the GPUs column only when some point used a GPU (all zeros on CPU say nothing).
    """
    groups = summary.groupby("group", sort=False) if "group" in summary.columns else [("all", summary)]
    gpus = "num_gpus" in summary.columns and bool((summary["num_gpus"].fillna(0) > 0).any())
    multi_node = "num_nodes" in summary.columns and bool((summary["num_nodes"].fillna(1) > 1).any())
    node_eff = _has(summary, "efficiency_inter_node")
    predicted = _has(summary, "efficiency_predicted")
    overlap = _has(summary, "efficiency_predicted_overlap")
    dominant = "dominant_loss" in summary.columns and bool(summary["dominant_loss"].fillna("").ne("").any())
    sanity = "sanity" in summary.columns and bool(summary["sanity"].fillna("").ne("").any())
    tables = []
    for label, g in groups:
        headers = ["workers"]
        headers += ["GPUs"] if gpus else []
        headers += ["nodes", "per node"] if multi_node else []
        headers += ["throughput (samples/s)", "n", "speedup", "efficiency"]
        headers += ["intra-node eff", "inter-node eff"] if node_eff else []
        headers += ["predicted eff"] if predicted else []
        headers += ["predicted eff (overlap)"] if overlap else []
        headers += ["dominant loss"] if dominant else []
        headers += ["sanity"] if sanity else []
        headers += ["note"]
        cells = []
        for r in g.to_dict("records"):
            mean, std = r.get(f"{THROUGHPUT}_mean"), r.get(f"{THROUGHPUT}_std")
            thr = fmt_number(mean)
            if not pd.isna(mean) and not pd.isna(std):
                thr += f" ± {fmt_number(std, like=mean)}"
            row = [fmt_int(r.get("num_workers"))]
            row += [fmt_int(r.get("num_gpus"))] if gpus else []
            row += [fmt_int(r.get("num_nodes")), fmt_int(r.get("workers_per_node"))] if multi_node else []
            row += [
                thr,
                fmt_int(r.get("n")),
                _with_ci(fmt_ratio(r.get("speedup")), r.get("speedup_ci95"), fmt_ratio),
                _with_ci(fmt_percent(r.get("efficiency")), r.get("efficiency_ci95"), fmt_percent),
            ]
            if node_eff:
                row += [
                    fmt_percent(r.get("efficiency_intra_node")),
                    fmt_percent(r.get("efficiency_inter_node")),
                ]
            row += [fmt_percent(r.get("efficiency_predicted"))] if predicted else []
            row += [fmt_percent(r.get("efficiency_predicted_overlap"))] if overlap else []
            row += [_text(r.get("dominant_loss"))] if dominant else []
            row += [_text(r.get("sanity"))] if sanity else []
            row.append(_text(r.get("note")))
            cells.append(row)
        title = _group_title(str(label), g)
        tables.append(Table(title=title, headers=headers, rows=cells, notes=tuple(wide_interval_notes(g))))
    return tables


def repeats_needed(half: float, value: float, n: int) -> int | None:
    """The fewest repeats whose 95 % half-width would be under `REPEATS_TARGET` of ``value``, for an
    interval of half-width ``half`` measured over ``n`` repeats (None: more than `REPEATS_CAP`).

    The half-width is t_0.975(n - 1) * s / sqrt(n); holding the spread s as measured, it scales with
    t_0.975(n' - 1) / sqrt(n'). For a ratio's delta-method interval (speedup, efficiency) the same
    scaling is an approximation: both of its points repeated n' times, their spreads as measured.
    """
    assert n >= 2 and half >= 0, (n, half)

    def width(m: int) -> float:
        return half * (t_quantile_975(m - 1) / math.sqrt(m)) / (t_quantile_975(n - 1) / math.sqrt(n))

    goal = REPEATS_TARGET * abs(value)
    if width(REPEATS_CAP) >= goal:
        return None
    lo, hi = n, REPEATS_CAP  # width(lo) may meet the goal only if it already does; the search finds hi
    if width(lo) < goal:
        return lo
    while hi - lo > 1:  # width falls as m grows: bisect for the first m that meets the goal
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if width(mid) < goal else (mid, hi)
    return hi


def wide_interval_notes(g: pd.DataFrame) -> list[str]:
    """One sentence per point of a group whose 95 % interval is wider than its value: which one, and
    how many repeats would bring it under `REPEATS_TARGET` of the value (`repeats_needed`).

    Efficiency stands for speedup too (the same relative width); a point whose ratio interval is not
    wide may still have a wide throughput interval (a noisy baseline, say)."""
    notes = []
    for r in g.to_dict("records"):
        workers = f"{fmt_int(r.get('num_workers'))} worker{'' if r.get('num_workers') == 1 else 's'}"
        eff, eff_half = r.get("efficiency"), r.get("efficiency_ci95")
        mean, mean_half = r.get(f"{THROUGHPUT}_mean"), r.get(f"{THROUGHPUT}_ci95")
        if not (_wide(eff_half, eff) or _wide(mean_half, mean)):
            continue
        n = int(r["n"])
        if _wide(eff_half, eff):
            base_n = _baseline_n(g, r)
            over = f"{n} repeats" + (f", {base_n} at the baseline" if base_n != n else "")
            shown = f"efficiency {fmt_percent(eff)} ± {fmt_percent(eff_half)} ({over})"
            # the interval's degrees of freedom come from the point with fewer repeats of the two
            needed = repeats_needed(eff_half, eff, min(n, base_n))
            share, of = eff_half / abs(eff), " of it and of its baseline"
        else:
            shown = f"throughput {fmt_number(mean)} ± {fmt_number(mean_half, like=mean)} samples/s"
            shown += f" ({n} repeats)"
            needed, share, of = repeats_needed(mean_half, mean, n), mean_half / abs(mean), ""
        count = f"more than {REPEATS_CAP:,}" if needed is None else f"about {needed}"
        notes.append(
            f"{workers}: {shown} is a 95 % interval wider than its value: more repeats are needed; "
            f"{count} repeats{of} would bring it under {REPEATS_TARGET * 100:.0f} % "
            f"of the value (now {share * 100:.0f} %), if the spread stays as measured."
        )
    return notes


def _wide(half: Any, value: Any) -> bool:
    return not (half is None or value is None or pd.isna(half) or pd.isna(value)) and half > abs(value)


def _baseline_n(g: pd.DataFrame, r: dict[str, Any]) -> int:
    """The repeats of the point a ratio was taken against (the group's fewest nodes at baseline_workers),
    which set the interval's degrees of freedom together with the point's own."""
    base = g[g["num_workers"] == r["baseline_workers"]]
    if "num_nodes" in base.columns:
        base = base.sort_values("num_nodes", na_position="last")
    return int(base["n"].iloc[0]) if len(base) else int(r["n"])


_PART_NAMES = {"compute": "compute", "comm_exposed": "exposed comm", "optimizer": "optimizer"}
_PART_NAMES["rank_skew"] = "rank skew"


def breakdown_tables(summary: pd.DataFrame) -> list[Table]:
    """Per group with a recorded breakdown: where a step's time goes at each worker count (median step
    in ms, each part's share of it) and the achieved TFLOP/s and MFU. Empty when nothing was recorded."""
    if not any(_has(summary, f"{part}_share") for part in BREAKDOWN):
        return []
    mfu = _has(summary, "mfu")
    tables = []
    groups = summary.groupby("group", sort=False) if "group" in summary.columns else [("all", summary)]
    for label, g in groups:
        g = g[g["step_time_median_s"].notna()]
        if g.empty:
            continue
        headers = ["workers", "step (ms)", *(f"{_PART_NAMES[p]} %" for p in BREAKDOWN), "TFLOP/s"]
        headers += ["MFU"] if mfu else []
        headers += ["dominant loss"]
        cells = []
        for r in g.to_dict("records"):
            row = [fmt_int(r.get("num_workers")), fmt_number(r["step_time_median_s"] * 1000)]
            row += [fmt_percent(r.get(f"{part}_share")) for part in BREAKDOWN]
            row.append(fmt_number(r.get("achieved_tflops")))
            row += [fmt_percent(r.get("mfu"))] if mfu else []
            row.append(_text(r.get("dominant_loss")))
            cells.append(row)
        tables.append(Table(title=f"{label}: time per step", headers=headers, rows=cells))
    return tables


PHASE_NAMES = ["startup", "build", "warm-up", "measured", "after measured", "teardown"]
"""Display names of schema.PHASE_COLUMNS, in the same order (the report's table and figure)."""


def phase_means(trials: pd.DataFrame) -> pd.DataFrame | None:
    """Per (study, num_workers): the mean wall time and mean of each phase (schema.PHASE_COLUMNS, in
    seconds) over the latest attempts that recorded them, `steps_s` (the mean of the measured steps
    proper, wall - overhead), `share` (the measured steps' share of those trials' summed wall time)
    and `n` (trials). None for results written before the phase columns, or with no timed trial."""
    trials = latest_attempts(trials)
    if not _has(trials, "startup_s"):
        return None
    timed = trials[trials["startup_s"].notna()].assign(steps_s=lambda t: t["wall_time_s"] - t["overhead_s"])
    by = timed.groupby(["study", "num_workers"])
    means = by[["wall_time_s", *PHASE_COLUMNS, "steps_s"]].mean()
    sums = by[["steps_s", "wall_time_s"]].sum()
    means["share"] = sums["steps_s"] / sums["wall_time_s"]
    means["n"] = by.size()
    return means


def phase_tables(trials: pd.DataFrame) -> list[Table]:
    """Per study, where a trial's wall clock goes at each worker count (`phase_means`) and the measured
    steps' share of those trials' wall time. Empty for results written before the phase columns."""
    means = phase_means(trials)
    if means is None:
        return []
    headers = ["workers", "trials", "wall (s)", *(f"{name} (s)" for name in PHASE_NAMES), "measured steps"]
    tables = []
    for study, g in means.groupby(level="study", sort=False):
        cells = [
            [fmt_int(workers), fmt_int(r["n"]), *(fmt_number(r[c]) for c in ("wall_time_s", *PHASE_COLUMNS))]
            + [fmt_percent(r["share"])]
            for (_, workers), r in g.iterrows()
        ]
        tables.append(
            Table(title=f"{study}: where a trial's wall time goes (means)", headers=headers, rows=cells)
        )
    return tables


def _group_title(label: str, g: pd.DataFrame) -> str:
    details = []
    scaling = g["scaling"].dropna().unique() if "scaling" in g.columns else []
    if len(scaling) == 1:
        details.append(f"{scaling[0]} scaling")
    base = g["baseline_workers"].dropna().unique() if "baseline_workers" in g.columns else []
    if len(base) == 1:
        details.append(f"baseline {int(base[0])} worker{'s' if base[0] != 1 else ''}")
    return f"{label} ({', '.join(details)})" if details else label


def render_text(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table: numbers right-aligned, the last (note) column left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)] + [cells[-1]]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---:"] * (len(headers) - 1) + [":---"]
    return "\n".join([line(headers), "|" + "|".join(align) + "|", *(line(r) for r in rows)])


def format_table(summary: pd.DataFrame) -> str:
    """The short per-group speedup/efficiency table of a `summarize` result, as plain text (each wide
    interval's sentence on a line under its table)."""
    blocks = [
        "\n".join([t.title, render_text(t.headers, t.rows), *(_wrap(note) for note in t.notes)])
        for t in group_tables(summary)
    ]
    return "\n\n".join(blocks)


def _wrap(sentence: str) -> str:
    # A terminal's width, not the table's: the sentences are long, the table may be wider still.
    return textwrap.fill(sentence, width=100, subsequent_indent="  ")


def format_markdown(summary: pd.DataFrame, title: str = "Scaling summary") -> str:
    """The per-group tables of a `summarize` result as a Markdown document, then the time breakdowns."""
    blocks = [f"# {title}"]
    for t in group_tables(summary) + breakdown_tables(summary):
        notes = "".join(f"\n\n{note}" for note in t.notes)
        blocks.append(f"## {t.title}\n\n{render_markdown(t.headers, t.rows)}{notes}")
    return "\n\n".join(blocks) + "\n"
