"""One self-contained HTML report of a `summarize` result: the sanity flags, the tables (with notes and
the dominant loss per point), the time breakdown tables, the plots embedded as PNG data (the stacked
time breakdown per worker count among them when it was recorded). It opens in any browser from a file, with no server, no script and nothing fetched."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from datetime import datetime, timezone

import pandas as pd

from tinyfold_ray.results.plots import render_plots
from tinyfold_ray.results.tables import breakdown_tables, group_tables

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:last-child, td:last-child, td.text { text-align: left; }
th { background: #f3f3f3; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures img { max-width: 34em; border: 1px solid #eee; }
.meta { color: #666; }
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


def render_html(summary: pd.DataFrame, title: str = "Scaling report") -> str:
    """The report as one HTML document (needs matplotlib for the figures)."""
    studies = ", ".join(sorted(set(summary["study"].dropna().astype(str)) - {""})) or "-"
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">studies: {html.escape(studies)}; made {made} by tinyfold-ray</p>',
    ]
    parts += _flags(summary)
    for group_title, headers, rows in group_tables(summary):
        parts += [f"<h2>{html.escape(group_title)}</h2>", render_html_table(headers, rows)]
    for group_title, headers, rows in breakdown_tables(summary):
        parts += [f"<h2>{html.escape(group_title)}</h2>", render_html_table(headers, rows)]
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, png in render_plots(summary).items()
    )
    parts += ["<h2>Figures</h2>", f'<div class="figures">{figures}</div>']
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
