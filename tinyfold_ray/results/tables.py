"""Presentation of a `summarize` result: the per-group text and Markdown tables.

Statistics live in results/summary.py; this module only formats columns that are there, so a column
the summary does not have (an older summary, no breakdown recorded) just leaves its table column out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from tinyfold_ray.results.summary import BREAKDOWN, THROUGHPUT, fmt_setting

__all__ = [
    "breakdown_tables",
    "fmt_int",
    "fmt_number",
    "fmt_percent",
    "fmt_ratio",
    "fmt_setting",
    "format_markdown",
    "format_table",
    "group_tables",
    "render_markdown",
    "render_text",
]


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


def group_tables(summary: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per group: a title, the headers and the cells of the familiar speedup/efficiency table.

    Speedup and efficiency carry their 95 % half-widths (``1.85x ± 0.10``) where there are any; the
    predicted efficiencies, the dominant loss and the sanity flags are columns when the summary has them.
    """
    groups = summary.groupby("group", sort=False) if "group" in summary.columns else [("all", summary)]
    multi_node = "num_nodes" in summary.columns and bool((summary["num_nodes"].fillna(1) > 1).any())
    node_eff = _has(summary, "efficiency_inter_node")
    predicted = _has(summary, "efficiency_predicted")
    overlap = _has(summary, "efficiency_predicted_overlap")
    dominant = "dominant_loss" in summary.columns and bool(summary["dominant_loss"].fillna("").ne("").any())
    sanity = "sanity" in summary.columns and bool(summary["sanity"].fillna("").ne("").any())
    tables = []
    for label, g in groups:
        headers = ["workers", "GPUs"]
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
            row = [fmt_int(r.get("num_workers")), fmt_int(r.get("num_gpus"))]
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
        tables.append((_group_title(str(label), g), headers, cells))
    return tables


_PART_NAMES = {"compute": "compute", "comm_exposed": "exposed comm", "optimizer": "optimizer"}
_PART_NAMES["rank_skew"] = "rank skew"


def breakdown_tables(summary: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
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
        tables.append((f"{label}: time per step", headers, cells))
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
    """The short per-group speedup/efficiency table of a `summarize` result, as plain text."""
    blocks = [f"{title}\n{render_text(h, rows)}" for title, h, rows in group_tables(summary)]
    return "\n\n".join(blocks)


def format_markdown(summary: pd.DataFrame, title: str = "Scaling summary") -> str:
    """The per-group tables of a `summarize` result as a Markdown document, then the time breakdowns."""
    blocks = [f"# {title}"]
    tables = group_tables(summary) + breakdown_tables(summary)
    blocks += [f"## {t}\n\n{render_markdown(h, rows)}" for t, h, rows in tables]
    return "\n\n".join(blocks) + "\n"
