"""Two studies side by side on matching configurations (MI300X vs H100, before vs after a change).

Pure pandas: works on two `summarize` results. Rows match on the settings (`SETTING_COLUMNS` but the
requested device and extra resources: the study, backend and device are what is being compared) plus
num_workers and num_nodes; ratios are B / A.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from tinyfold_ray.errors import ConfigError
from tinyfold_ray.results.schema import SETTING_COLUMNS
from tinyfold_ray.results.summary import THROUGHPUT, per_point_batch
from tinyfold_ray.results.tables import (
    fmt_int,
    fmt_number,
    fmt_percent,
    fmt_ratio,
    fmt_setting,
    render_markdown,
    render_text,
)

__all__ = ["compare", "format_compare", "format_compare_markdown"]

_VALUES = ("study", "device_name", "n", f"{THROUGHPUT}_mean", "efficiency", "note")
# Settings that name the hardware (device: rocm vs cuda; extra: an accelerator type): never matched on.
_HARDWARE = ("device", "extra_resources")


def compare(a: pd.DataFrame, b: pd.DataFrame, *, ignore: Iterable[str] = ()) -> pd.DataFrame:
    """Join two summaries on matching configurations; ``ignore`` drops settings from the match.

    Columns: the matched settings, num_workers, num_nodes, then for each side (suffix ``_a`` / ``_b``)
    study, device_name, n, throughput_samples_per_sec_mean, efficiency and note, and the ratios
    throughput_ratio and efficiency_ratio (B / A). Raises `ConfigError` when nothing matches, naming the
    settings on which the two differ.
    """
    ignore = set(ignore)
    unknown = ignore - set(SETTING_COLUMNS)
    if unknown:
        raise ConfigError(f"cannot ignore {', '.join(sorted(unknown))}: not a setting column")
    settings = [c for c in SETTING_COLUMNS if c in a.columns and c in b.columns and c not in _HARDWARE]
    keys = [c for c in settings if c not in ignore] + ["num_workers", "num_nodes"]
    for name, side in (("A", a), ("B", b)):
        absent = [c for c in (*keys, *_VALUES) if c not in side.columns]
        if absent:
            raise ConfigError(f"{name} is not a summary table: it lacks {', '.join(absent)}")

    left, right = _keyed(a, keys), _keyed(b, keys)
    merged = left.merge(right, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        raise ConfigError(_no_match_message(left, right, keys))
    merged["throughput_ratio"] = merged[f"{THROUGHPUT}_mean_b"] / merged[f"{THROUGHPUT}_mean_a"]
    merged["efficiency_ratio"] = merged["efficiency_b"] / merged["efficiency_a"]
    values = [f"{c}_{side}" for c in _VALUES[:-1] for side in "ab"]
    columns = [*keys, *values, "throughput_ratio", "efficiency_ratio", "note_a", "note_b"]
    return merged[columns].reset_index(drop=True)


def _keyed(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # One key type on both sides (None for NA), so an all-null column still matches its twin.
    frame = summary[[*keys, *_VALUES]].copy()
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), None)
    for col in ("num_workers", "num_nodes"):
        frame[col] = [None if v is None else int(v) for v in frame[col]]
    return frame


def _show(values: set) -> str:
    return ", ".join(sorted(fmt_setting(v) for v in values)) or "null"


def _no_match_message(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> str:
    differ = {}  # column -> what each side has, for columns where the two share no value
    for col in keys:
        va, vb = set(left[col].dropna()), set(right[col].dropna())
        if va.isdisjoint(vb) and (va or vb):
            differ[col] = f"{col} (A: {_show(va)}; B: {_show(vb)})"
    if not differ:
        return "no matching configurations between A and B"
    hint = ""
    if differ.keys() & SETTING_COLUMNS.keys():
        hint = " (to compare across a setting: --ignore SETTING, or compare(..., ignore=[...]))"
    return f"no matching configurations between A and B: they differ in {', '.join(differ.values())}{hint}"


def _compare_table(cmp: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    settings = cmp[[c for c in cmp.columns if c in SETTING_COLUMNS]].astype(object)
    # The batch that follows from the worker count (the global batch of a weak-scaling row, the
    # per-worker batch of a strong one) changes down every curve: it is no label, the other batch is.
    for col, per_point in per_point_batch(settings).items():
        settings.loc[per_point, col] = None
    varying = [c for c in settings.columns if settings[c].dropna().astype(str).nunique() > 1]
    headers = ["config"] if varying else []
    headers += ["workers", "nodes", "A samples/s", "B samples/s", "B/A", "A eff", "B eff", "B/A eff", "note"]
    rows = []
    for i, r in cmp.iterrows():
        config = settings.loc[i]
        label = ", ".join(f"{c}={fmt_setting(config[c])}" for c in varying if config[c] is not None)
        row = [label] if varying else []
        notes = [f"{side}: {r[f'note_{side.lower()}']}" for side in "AB" if r[f"note_{side.lower()}"]]
        row += [
            fmt_int(r["num_workers"]),
            fmt_int(r["num_nodes"]),
            fmt_number(r[f"{THROUGHPUT}_mean_a"]),
            fmt_number(r[f"{THROUGHPUT}_mean_b"]),
            fmt_ratio(r["throughput_ratio"]),
            fmt_percent(r["efficiency_a"]),
            fmt_percent(r["efficiency_b"]),
            fmt_ratio(r["efficiency_ratio"]),
            "; ".join(notes),
        ]
        rows.append(row)
    return headers, rows


def _sides(cmp: pd.DataFrame) -> str:
    def side(s: str) -> str:
        studies = ", ".join(sorted(set(cmp[f"study_{s}"].dropna().astype(str))))
        devices = ", ".join(sorted(set(cmp[f"device_name_{s}"].dropna().astype(str)) - {""}))
        return f"{studies} ({devices})" if devices else studies

    return f"A = {side('a')}, B = {side('b')}; ratios are B / A"


def format_compare(cmp: pd.DataFrame) -> str:
    """A `compare` result as a plain text table."""
    return f"{_sides(cmp)}\n{render_text(*_compare_table(cmp))}"


def format_compare_markdown(cmp: pd.DataFrame) -> str:
    """A `compare` result as a Markdown document."""
    return f"# Comparison\n\n{_sides(cmp)}\n\n{render_markdown(*_compare_table(cmp))}\n"
