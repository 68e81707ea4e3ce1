"""One self-contained HTML report of a `summarize` result: what the results ran on (machines, devices,
software, dates, git commits, from the trials table), the sanity flags, the tables (with notes, the
dominant loss per point, and a sentence under a table for each interval wider than its value), the time
breakdown tables, where each study's trial wall time went (phase means per worker count), and the plots
embedded as PNG data at the page's width, each with a caption saying what it shows. It opens in any
browser from a file, with no server, no script and nothing fetched."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd

from tinyfold_ray.results.plots import CAPTIONS, render_plots
from tinyfold_ray.results.summary import latest_attempts
from tinyfold_ray.results.tables import Table, breakdown_tables, group_tables, phase_tables

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:last-child, td:last-child, td.text { text-align: left; }
td:not(.text) { white-space: nowrap; }  /* keep 1.82x ± 2.40 on one line */
th { background: #f3f3f3; }
figure { margin: 0 0 2em; }
figure img { width: 100%; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; margin-top: 0.3em; }
.meta { color: #666; }
.ran-on th, .ran-on td { text-align: left; vertical-align: top; }
.ran-on th { background: none; font-weight: 600; white-space: nowrap; }
.repeats { background: #eef4ff; border-left: 4px solid #3a6fd8; padding: 0.2em 1em; }
.sanity { background: #fff4e5; border-left: 4px solid #e67e00; padding: 0.2em 1em; }
"""


def _cell(text: str) -> str:
    # Numbers align right for comparison down a column; words (dominant loss, sanity) read left-aligned.
    words = any(ch.isalpha() for ch in text.replace("x", "")) and not text[:1].isdigit()
    return f'<td class="text">{html.escape(text)}</td>' if words else f"<td>{html.escape(text)}</td>"


def render_html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flags(summary: pd.DataFrame) -> list[str]:
    """A warning list at the top naming every point with a sanity flag (they are also in the tables)."""
    if "sanity" not in summary.columns:
        return []
    flagged = summary[summary["sanity"].fillna("").ne("")]
    if flagged.empty:
        return []
    items = "".join(
        f"<li>{html.escape(str(r['group']))}, {int(r['num_workers'])} workers: {html.escape(r['sanity'])}</li>"
        for r in flagged.to_dict("records")
    )
    return [f'<div class="sanity"><h2>Sanity flags</h2><ul>{items}</ul></div>']


# Figures drawn at 6.4 in: this many pixels per inch fill the page's 72em width without upscaling.
_REPORT_DPI = 180


def _values(values: pd.Series, unit: str = "trial") -> str:
    """The distinct values of a column, most common first; with several, each with its count (that the
    results hold several is itself what a reader must know). Empty when nothing was recorded."""
    counts = values.dropna().astype(str).loc[lambda v: v.ne("")].value_counts().sort_index()
    counts = counts.sort_values(ascending=False, kind="stable")  # ties in name order
    if len(counts) <= 1:
        return "".join(counts.index)
    return ", ".join(f"{v} ({k} {unit}{'s' if k != 1 else ''})" for v, k in counts.items())


def _period(trials: pd.DataFrame) -> str:
    """From the first trial's start to the last trial's end, in UTC."""
    times = [pd.to_datetime(trials[c], utc=True) for c in ("start_time", "end_time") if c in trials.columns]
    stamps = pd.concat(times).dropna() if times else pd.Series([], dtype=object)
    if stamps.empty:
        return ""
    first, last = stamps.min(), stamps.max()
    end = last.strftime("%H:%M" if last.date() == first.date() else "%Y-%m-%d %H:%M")
    return f"{first:%Y-%m-%d %H:%M} to {end} UTC"


def ran_on(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(what, values) lines saying what a trials table ran on, over the latest attempt of each trial:
    machines, devices, GPUs per node, backends, collective library and version, torch, Ray, Python,
    CUDA/HIP, the period, the git commits and env vars. A line nothing recorded is left out; a line with
    several values names each with its number of trials."""
    trials = latest_attempts(trials)

    def col(name: str) -> pd.Series:
        return trials[name] if name in trials.columns else pd.Series([None] * len(trials), dtype=object)

    status = col("status").fillna("?")
    counts = ", ".join(f"{k} {v}" for v, k in status.value_counts().items())
    hosts = col("hostnames").dropna().astype(str).str.split(",").explode().str.strip()
    gpus = col("node_gpus").where(col("node_gpus").fillna(0) > 0)
    comm = (
        col("comm_backend").fillna("").astype(str) + " " + col("comm_library_version").fillna("").astype(str)
    )
    env = col("env_vars").where(col("env_vars").fillna("{}").ne("{}"))
    lines = [
        ("trials", f"{len(trials)} ({counts})"),
        ("machines", _values(hosts)),
        ("devices", _values(col("device_name"))),
        ("GPUs per node", _values(gpus.map(lambda v: f"{int(v)}", na_action="ignore"))),
        ("backend", _values(col("backend"))),
        ("collectives", _values(comm.str.strip())),
        ("torch", _values(col("torch_version"))),
        ("Ray", _values(col("ray_version"))),
        ("Python", _values(col("python_version"))),
        ("CUDA", _values(col("cuda_version"))),
        ("HIP", _values(col("hip_version"))),
        ("ran", _period(trials)),
        ("git commit", _values(col("git_commit")) or "not recorded"),
        ("env vars", _values(env)),
    ]
    return [(what, value) for what, value in lines if value]


def _ran_on_table(trials: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(what)}</th><td>{html.escape(value)}</td></tr>"
        for what, value in ran_on(trials)
    )
    return f'<h2>Ran on</h2><table class="ran-on"><tbody>{rows}</tbody></table>'


def _table(table: Table) -> list[str]:
    parts = [f"<h2>{html.escape(table.title)}</h2>", render_html_table(table.headers, table.rows)]
    if table.notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in table.notes)
        parts.append(f'<div class="repeats"><p>Intervals wider than their values:</p><ul>{items}</ul></div>')
    return parts


def render_html(summary: pd.DataFrame, trials: pd.DataFrame, title: str = "Scaling report") -> str:
    """The report of ``summary`` as one HTML document; ``trials`` is the trials table it was made from
    (for what the results ran on). Needs matplotlib for the figures."""
    studies = ", ".join(sorted(set(summary["study"].dropna().astype(str)) - {""})) or "-"
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">studies: {html.escape(studies)}; made {made} by tinyfold-ray</p>',
        _ran_on_table(trials),
    ]
    parts += _flags(summary)
    for table in group_tables(summary) + breakdown_tables(summary) + phase_tables(trials):
        parts += _table(table)
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(CAPTIONS[name])} '
        f'<span class="meta">({html.escape(name)})</span></figcaption></figure>'
        for name, png in render_plots(summary, dpi=_REPORT_DPI, trials=trials).items()
    )
    parts += ["<h2>Figures</h2>", figures]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
