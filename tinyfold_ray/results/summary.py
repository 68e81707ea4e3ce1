"""Speedup, efficiency and noise per scaling group, from the trials table (pure pandas: no torch, no Ray).

Only the latest attempt of each trial counts. Each study is grouped on its own: a group is one study,
one value of every setting column (`schema.SETTING_COLUMNS`: every resolved setting but the worker
count) and one value of every identity column (`schema.IDENTITY_COLUMNS`: device name, backend, GPUs
per node, torch, Ray and collective library versions, env_vars). For strong scaling the per-worker
batch is not a group key (it shrinks as workers grow, the global batch is fixed), for weak scaling the
global batch is not; which applies is each trial's own `scaling`, so a weak and a strong study summarised
together keep their own baselines. Null is a value like any other: `num_threads` null and 4 are two
groups, never one mean. (A setting column that an older file lacks is not null: `load_results` fills it
with the default of that file's time, `schema.implied_settings()`.)

Trials that differ only in what they ran on (another GPU, torch, Ray or NCCL version, other `env:`
values) are never averaged together: they are split into groups whose label names the difference (e.g.
``device_name=NVIDIA H100 80GB HBM3``) and whose points' note says ``split by device_name: results ran
on several machines/software``. A failed trial that never reached its workers records no machine
(null identity); it is counted with the ok trials of its settings, at their most common identity.

The group label names the settings and identity values that tell the study's groups apart (prefixed
with ``study=...`` when the frame holds several studies; null shown as ``null``), else the study name.
Within a group the baseline is the smallest worker count, and (DESIGN.md, the same formula for weak and
strong scaling)::

    speedup    = mean throughput(N) / mean throughput(N_baseline)
    efficiency = speedup / (N / N_baseline)

Means, spreads and confidence intervals are over the repeats of a point, using each trial's
`throughput_samples_per_sec` (global batch / median step time). Failed trials are counted, never
averaged in.

Confidence intervals of speedup and efficiency use the delta method on the ratio of two means: with
R = m_N / m_B, means m and sample standard deviations s over n_N and n_B ok repeats,

    se(R)            = R * sqrt(s_N^2 / (n_N m_N^2) + s_B^2 / (n_B m_B^2))
    speedup_ci95     = t_0.975(min(n_N, n_B) - 1) * se(R)
    efficiency_ci95  = speedup_ci95 / (N / N_baseline)

(half-widths; null at the baseline point itself and where either point has fewer than 2 repeats). The
conservative min(n) - 1 degrees of freedom stand in for Welch-Satterthwaite's.

The time breakdown of a point (compute, exposed communication, optimiser, rank skew, TFLOP/s, MFU), the
all-reduce fit (allreduce_latency_s, allreduce_s_per_byte), load_imbalance, replica_divergence and
loss_rank_spread are medians over its ok repeats of each trial's figures; slowest_rank and
slowest_rank_host are the most common (rank, host) of those repeats. Each `*_share` is a breakdown
median over the point's median step time. When load_imbalance is above `STRAGGLER_IMBALANCE` the note
says ``straggler: rank r (host) computes x % slower`` (x = (load_imbalance - 1) * 100): under DDP a
fast rank waits for a slow one inside backward, so the step times alone show an exposed all-reduce.

The `sanity` column flags a point (see `SANITY_*`) whose loss did not fall in some ok repeat
(final_loss >= first_loss), whose replicas diverged (replica_divergence of some repeat above
`SANITY_REPLICA_DIVERGENCE`), or whose straggler skew (rank_skew_median_s / step_time_median_s) is above
`SANITY_SKEW_SHARE`. loss_rank_spread is information only: under DDP each rank trains on other samples,
so the ranks' mean losses differ by design.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tinyfold_ray.errors import ConfigError
from tinyfold_ray.results.schema import IDENTITY_COLUMNS, SETTING_COLUMNS

__all__ = [
    "BREAKDOWN",
    "DEFAULT_CV_THRESHOLD",
    "SANITY_REPLICA_DIVERGENCE",
    "SANITY_SKEW_SHARE",
    "STRAGGLER_IMBALANCE",
    "summarize",
    "t_quantile_975",
]

DEFAULT_CV_THRESHOLD = 0.05
"""A point whose coefficient of variation over repeats exceeds this (5 %) is flagged noisy."""

SANITY_REPLICA_DIVERGENCE = 1e-4
"""Replicas diverged when the ranks' losses of one common batch after training differ by more than this
(relative spread): DDP keeps every replica's parameters equal, so only rounding may tell them apart."""

SANITY_SKEW_SHARE = 0.10
"""A straggler skew (slowest minus fastest rank per step) above 10 % of the step is flagged."""

STRAGGLER_IMBALANCE = 1.10
"""A point whose slowest rank computes more than 10 % slower than the median of the other ranks names that rank."""

THROUGHPUT = "throughput_samples_per_sec"

# Parts of a step (trial columns, seconds): each gets a per-point median and a share of the step.
BREAKDOWN = {
    "compute": "compute_time_median_s",
    "comm_exposed": "comm_exposed_median_s",
    "optimizer": "optimizer_time_median_s",
    "rank_skew": "rank_skew_median_s",
}
_MEDIANS = ["step_time_median_s", "step_time_p95_s", "allreduce_time_s", *BREAKDOWN.values()]
_MEDIANS += ["achieved_tflops", "mfu", "allreduce_latency_s", "allreduce_s_per_byte"]
_MEDIANS += ["load_imbalance", "replica_divergence", "loss_rank_spread"]


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (exact, from scipy)."""
    assert dof >= 1, dof
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


@dataclass
class _Point:
    """One row of the summary: the trials of one group at one worker count and placement."""

    num_workers: Any
    num_nodes: Any
    workers_per_node: Any
    first: pd.Series  # the first trial, for the setting values
    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    speedup: float = math.nan
    efficiency: float = math.nan
    speedup_ci95: float = math.nan  # half-widths, delta method (module docstring)
    efficiency_ci95: float = math.nan
    efficiency_intra_node: float = math.nan
    efficiency_inter_node: float = math.nan
    baseline_workers: Any = None
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarize(
    df: pd.DataFrame,
    *,
    cv_threshold: float = DEFAULT_CV_THRESHOLD,
    fallback_baseline: bool = False,
) -> pd.DataFrame:
    """One row per (group, num_workers, num_nodes, workers_per_node) of a trials table.

    Columns: study, group (a label of the settings and identity values that tell groups apart), the
    group's settings, its identity columns (backend, node_gpus, torch_version, ray_version,
    comm_library_version, env_vars), num_workers, num_gpus, num_nodes, workers_per_node, device_name
    (one per point), n (ok repeats), n_failed, throughput_samples_per_sec_{mean,std,median,ci95} (ci95
    is the half-width of the Student-t 95 % interval over repeats), cv, speedup, speedup_ci95,
    efficiency, efficiency_ci95 (delta-method half-widths), efficiency_intra_node and
    efficiency_inter_node (only for groups spanning several node counts), baseline_workers,
    step_time_median_s and step_time_p95_s (medians over repeats), allreduce_time_s,
    allreduce_latency_s and allreduce_s_per_byte (medians, where recorded), the breakdown medians
    compute_time_median_s, comm_exposed_median_s, optimizer_time_median_s, rank_skew_median_s and
    their shares of the step (compute_share, comm_exposed_share, optimizer_share, rank_skew_share),
    achieved_tflops and mfu (medians), load_imbalance (median), slowest_rank and slowest_rank_host (the
    most common), replica_divergence and loss_rank_spread (medians), sanity (flags, empty when fine),
    noisy (single repeat or cv above ``cv_threshold``) and note (why a point is split, noisy, failed,
    has no baseline or a straggler; empty when there is nothing to say).

    When a group's smallest worker count failed in every repeat, its speedup and efficiency are NA and
    the note says so; with ``fallback_baseline`` the smallest worker count with an ok trial becomes
    the baseline instead (also noted).
    """
    missing = [c for c in ("num_workers", THROUGHPUT) if c not in df.columns]
    if missing:
        raise ConfigError(f"cannot summarize: the trials table has no column {', '.join(missing)}")
    if df.empty:
        raise ConfigError("cannot summarize: the trials table is empty")
    if not cv_threshold > 0:
        raise ConfigError(f"cv_threshold={cv_threshold!r} is not allowed: must be a positive fraction")

    work = latest_attempts(df).reset_index(drop=True)
    if "study" not in work.columns:
        work["study"] = ""
    status_ok = work["status"].eq("ok") if "status" in work.columns else pd.Series(True, index=work.index)
    work["_ok"] = status_ok.fillna(False).astype(bool) & work[THROUGHPUT].notna()
    setting_cols = ["study", *(c for c in SETTING_COLUMNS if c in work.columns)]
    identity_cols = [c for c in IDENTITY_COLUMNS if c in work.columns]
    # Every setting and identity column is a key, null included: a constant one never splits a group,
    # and a new column can never be averaged over by mistake.
    keys = _group_keys(work, [*setting_cols, *identity_cols])
    settings_id = _ids(keys[setting_cols])
    keys = _fill_unknown_identity(keys, work["_ok"], settings_id, identity_cols)
    try:
        order = keys.assign(_workers=work["num_workers"]).sort_values(
            [*keys.columns, "_workers"], na_position="last", kind="stable"
        )
        work, keys = work.loc[order.index], keys.loc[order.index]
    except TypeError:  # a hand-built frame with mixed types in a column: keep its order
        pass
    group_ids = _ids(keys)
    first_rows = keys[~group_ids.duplicated()]  # one per group, in group order
    labels = _group_labels(first_rows, [*setting_cols[1:], *identity_cols])
    # Per settings: the identity columns that take several values, i.e. what split its trials apart.
    split = keys[identity_cols].groupby(settings_id).nunique(dropna=False).gt(1)

    rows = []
    for _, members in work.groupby(group_ids, sort=True):
        first = members.index[0]
        points = _points(members, cv_threshold)
        differ = [c for c in identity_cols if split.loc[settings_id[first], c]]
        if differ:
            for point in points:
                point.notes.insert(
                    0, f"split by {', '.join(differ)}: results ran on several machines/software"
                )
        _scaling_efficiency(points, fallback_baseline)
        _node_efficiency(points, fallback_baseline)
        rows += [_row(keys.loc[first], p, setting_cols[1:], identity_cols, labels[first]) for p in points]
    return _typed(pd.DataFrame(rows), df, [*setting_cols, *(c for c in identity_cols if c != "device_name")])


def latest_attempts(trials: pd.DataFrame) -> pd.DataFrame:
    """Only the latest attempt of each trial (a frame loaded with attempts=True holds them all)."""
    if "attempt" not in trials.columns or "trial_id" not in trials.columns:
        return trials.copy()
    attempt = trials["attempt"].fillna(1)  # schema-1 rows: their trial's only attempt
    study = trials["study"] if "study" in trials.columns else pd.Series("", index=trials.index)
    latest = attempt.groupby([study, trials["trial_id"]], dropna=False).transform("max")
    return trials[attempt.eq(latest)].copy()


def _group_keys(work: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    """The group key of every trial: the columns with NA as None, the scaling-dependent batch masked."""
    keys = work[key_cols].astype(object)
    keys = keys.where(work[key_cols].notna(), None)
    for col, per_point in per_point_batch(keys).items():
        keys.loc[per_point, col] = None
    return keys


def per_point_batch(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """The batch column that is a property of the point, not of the group (True where so): the per-worker
    batch under strong scaling (it shrinks as workers grow), the global batch under weak scaling."""
    if "scaling" not in frame.columns:
        return {}
    masks = {"batch_per_worker": frame["scaling"].eq("strong"), "global_batch": frame["scaling"].eq("weak")}
    return {col: mask for col, mask in masks.items() if col in frame.columns}


def _ids(keys: pd.DataFrame) -> pd.Series:
    """One integer per distinct row of ``keys`` (None equals None), numbered in order of appearance."""
    rows = pd.Series(list(keys.itertuples(index=False, name=None)), index=keys.index, dtype=object)
    return pd.Series(pd.factorize(rows)[0], index=keys.index)


def _fill_unknown_identity(
    keys: pd.DataFrame, ok: pd.Series, settings_id: pd.Series, identity_cols: list[str]
) -> pd.DataFrame:
    """A failed trial that never reached its workers records no machine or software (null identity):
    count it where the ok trials of its settings ran (their most common value), not as a group of its own.
    """
    keys = keys.copy()
    for col in identity_cols:
        usual = keys[col].where(ok).groupby(settings_id).transform(_mode)
        unknown = ~ok & keys[col].isna()
        keys.loc[unknown, col] = usual[unknown]
    return keys.where(keys.notna(), None)


def _scalar(value: Any) -> Any:
    """A plain Python value, None for NA (so tuples of keys compare and sort)."""
    if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _as_int(value: Any) -> int | None:
    value = _scalar(value)
    return None if value is None else int(value)


def _mode(values: pd.Series) -> Any:
    values = values.dropna()
    return _scalar(values.mode().iloc[0]) if len(values) else None


def _points(trials: pd.DataFrame, cv_threshold: float) -> list[_Point]:
    """Split one group's trials into points and compute each point's statistics over ok repeats."""
    trials = trials.copy()
    ok = trials["_ok"]
    # A trial that failed before its workers started has no placement: give it the placement the ok
    # trials at the same worker count had, so it is counted at the right point.
    for col in ("num_nodes", "workers_per_node"):
        if col not in trials.columns:
            trials[col] = None
        for same in trials.groupby("num_workers", dropna=False).groups.values():
            fill = _mode(trials.loc[same][ok.loc[same]][col])
            if fill is not None:
                trials.loc[same, col] = trials.loc[same, col].fillna(fill)
    placement = ["num_workers", "num_nodes", "workers_per_node"]
    by_point = {
        tuple(_as_int(v) for v in key): point_trials
        for key, point_trials in trials.groupby(placement, dropna=False, sort=False)
    }
    points = []
    for key in sorted(by_point, key=_none_last):
        point_trials = by_point[key]
        good = point_trials[point_trials["_ok"]]
        point = _Point(*key, first=point_trials.iloc[0])
        _point_stats(point, good, point_trials, cv_threshold)
        points.append(point)
    return points


def _none_last(key: tuple) -> tuple:
    return tuple((v is None, 0 if v is None else v) for v in key)


def _median(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].median()) if col in frame.columns and frame[col].notna().any() else math.nan


def _point_stats(point: _Point, good: pd.DataFrame, all_trials: pd.DataFrame, cv_threshold: float) -> None:
    thr = good[THROUGHPUT].to_numpy(dtype=float)
    n, n_failed = len(thr), len(all_trials) - len(thr)
    mean = float(thr.mean()) if n else math.nan
    std = float(thr.std(ddof=1)) if n >= 2 else math.nan
    cv = std / mean if n >= 2 and mean > 0 else math.nan
    point.mean, point.std, point.n = mean, std, n
    gpus = all_trials["num_gpus"].dropna() if "num_gpus" in all_trials.columns else pd.Series([], dtype=float)
    point.stats = {
        "num_gpus": _scalar(gpus.max()) if len(gpus) else None,
        "n": n,
        "n_failed": n_failed,
        f"{THROUGHPUT}_mean": mean,
        f"{THROUGHPUT}_std": std,
        f"{THROUGHPUT}_median": float(np.median(thr)) if n else math.nan,
        f"{THROUGHPUT}_ci95": t_quantile_975(n - 1) * std / math.sqrt(n) if n >= 2 else math.nan,
        "cv": cv,
        **{col: _median(good, col) for col in _MEDIANS},
        **_slowest(good),
        "noisy": n == 1 or (n >= 2 and cv > cv_threshold),
    }
    step = point.stats["step_time_median_s"]
    for part, col in BREAKDOWN.items():
        value = point.stats[col]
        point.stats[f"{part}_share"] = value / step if step > 0 else math.nan
    point.stats["sanity"] = "; ".join(_sanity(good, point.stats))
    if n == 0:
        errors = all_trials["error"].dropna() if "error" in all_trials.columns else []
        reason = f": {_one_line(errors.iloc[0])}" if len(errors) else ""
        point.notes.append(f"all {n_failed} failed{reason}" if n_failed > 1 else f"failed{reason}")
    elif n_failed:
        point.notes.append(f"{n_failed} of {n + n_failed} failed")
    if n == 1:
        point.notes.append("single repeat")
    elif n >= 2 and cv > cv_threshold:
        point.notes.append(f"cv {cv * 100:.1f}%")
    imbalance = point.stats["load_imbalance"]
    if imbalance > STRAGGLER_IMBALANCE:  # NaN compares False
        rank, host = point.stats["slowest_rank"], point.stats["slowest_rank_host"] or "host unknown"
        point.notes.append(f"straggler: rank {rank} ({host}) computes {(imbalance - 1) * 100:.0f} % slower")


def _slowest(good: pd.DataFrame) -> dict[str, Any]:
    """The slowest rank and its host that most repeats name (None where no repeat names one)."""
    cols = ["slowest_rank", "slowest_rank_host"]
    named = good[cols].dropna(subset=cols[:1]) if set(cols) <= set(good.columns) else good.iloc[:0]
    if named.empty:
        return dict.fromkeys(cols)
    rank, host = named.groupby(cols, dropna=False).size().idxmax()
    return {"slowest_rank": _as_int(rank), "slowest_rank_host": _scalar(host)}


def _sanity(good: pd.DataFrame, stats: dict[str, Any]) -> list[str]:
    """Short flags for results that should not be trusted as they stand (empty when fine)."""
    flags = []
    if {"first_loss", "final_loss"} <= set(good.columns):
        known = good.dropna(subset=["first_loss", "final_loss"])
        stuck = int((known["final_loss"] >= known["first_loss"]).sum())
        if stuck:
            flags.append(f"loss did not fall in {stuck} of {len(known)}")
    if "replica_divergence" in good.columns:
        known = good["replica_divergence"].dropna()
        diverged = known[known > SANITY_REPLICA_DIVERGENCE]
        if len(diverged):
            flags.append(
                f"replicas diverged (common-batch loss spread {diverged.max():.1e} in {len(diverged)} of "
                f"{len(known)})"
            )
    if stats["rank_skew_share"] > SANITY_SKEW_SHARE:  # NaN compares False
        flags.append(f"straggler skew {stats['rank_skew_share'] * 100:.0f} % of step")
    return flags


def _one_line(text: Any, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pick_baseline(
    candidates: list[_Point], order: Callable[[_Point], tuple], fallback: bool, what: str
) -> tuple[_Point | None, str | None]:
    """The first candidate in ``order``; if it has no ok trial, a note, and with ``fallback`` the first
    candidate that has one."""
    candidates = sorted((p for p in candidates if p.num_workers is not None), key=order)
    if not candidates:
        return None, None
    first = candidates[0]
    if first.n > 0:
        return first, None
    failed = f"N={first.num_workers} failed in all repeats"
    if fallback:
        for point in candidates:
            if point.n > 0:
                return point, f"{what} N={point.num_workers} ({failed})"
    return None, f"no {what}: {failed}"


def _scaling_efficiency(points: list[_Point], fallback: bool) -> None:
    order = lambda p: _none_last((p.num_workers, p.num_nodes))
    base, note = _pick_baseline(points, order, fallback, "baseline")
    for point in points:
        if note and point.n > 0:
            point.notes.append(note)
        if base is None or point.num_workers is None:
            continue
        point.baseline_workers = base.num_workers
        point.speedup = point.mean / base.mean
        point.efficiency = point.speedup / (point.num_workers / base.num_workers)
        if point is not base and min(point.n, base.n) >= 2:
            half = ratio_ci95(point.mean, point.std, point.n, base.mean, base.std, base.n)
            point.speedup_ci95 = half
            point.efficiency_ci95 = half / (point.num_workers / base.num_workers)


def ratio_ci95(m_a: float, s_a: float, n_a: int, m_b: float, s_b: float, n_b: int) -> float:
    """Half-width of the 95 % interval of m_a / m_b by the delta method (independent samples), with
    Student-t at min(n_a, n_b) - 1 degrees of freedom."""
    ratio = m_a / m_b
    se = ratio * math.sqrt(s_a**2 / (n_a * m_a**2) + s_b**2 / (n_b * m_b**2))
    return t_quantile_975(min(n_a, n_b) - 1) * se


def _node_efficiency(points: list[_Point], fallback: bool) -> None:
    """Intra-node efficiency among the single-node points, inter-node efficiency at equal workers per node.

    inter-node efficiency = throughput(N nodes) / (throughput(fewest nodes) * W / W_fewest) at the same
    workers_per_node, W being the worker count (= nodes * workers_per_node when every node is full).
    """
    if len({p.num_nodes for p in points if p.num_nodes is not None}) < 2:
        return
    single = [p for p in points if p.num_nodes == 1]
    base, note = _pick_baseline(single, lambda p: (p.num_workers,), fallback, "intra-node baseline")
    for point in single:
        if note and point.n > 0:
            point.notes.append(note)
        if base is not None:
            point.efficiency_intra_node = (point.mean / base.mean) / (point.num_workers / base.num_workers)

    per_node_counts = {p.workers_per_node for p in points if p.workers_per_node is not None}
    for wpn in sorted(per_node_counts):
        same = [p for p in points if p.workers_per_node == wpn and p.num_nodes is not None]
        if len({p.num_nodes for p in same}) < 2:
            continue  # nothing to compare across nodes at this many workers per node
        order = lambda p: (p.num_nodes, p.num_workers)
        base, note = _pick_baseline(same, order, fallback, f"inter-node baseline at {wpn}/node")
        for point in same:
            if note and point.n > 0:
                point.notes.append(note)
            if base is not None and point.num_workers is not None:
                ideal = base.mean * point.num_workers / base.num_workers
                point.efficiency_inter_node = point.mean / ideal


def _group_labels(groups: pd.DataFrame, cols: list[str]) -> pd.Series:
    """A short label per group (one row of keys each): the values of ``cols`` that tell its study's
    groups apart, after ``study=...`` when there are several studies; else the study's name."""
    shown = groups[cols].astype(object).map(_show)
    for col, per_point in per_point_batch(groups).items():
        shown.loc[per_point, col] = None  # not a group key there: neither compared nor named
    differs = shown.groupby(groups["study"], dropna=False).transform("nunique").gt(1)
    several = groups["study"].nunique(dropna=False) > 1
    labels = {}
    for idx, study in groups["study"].items():
        parts = [f"study={study}"] if several else []
        parts += [
            f"{c}={shown.at[idx, c]}" for c in cols if differs.at[idx, c] and pd.notna(shown.at[idx, c])
        ]
        labels[idx] = ", ".join(parts) or str(study or "all")
    return pd.Series(labels)


def _show(value: Any) -> str:
    return "null" if _scalar(value) is None else fmt_setting(value)


def fmt_setting(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _row(
    key: pd.Series, point: _Point, setting_cols: list[str], identity_cols: list[str], label: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"study": key["study"], "group": label}
    for col in setting_cols:
        row[col] = _scalar(point.first[col])  # the masked batch column varies per point: its own value
    row.update({col: key.get(col) for col in ("device_name", *identity_cols)})
    row.update(
        num_workers=point.num_workers,
        num_nodes=point.num_nodes,
        workers_per_node=point.workers_per_node,
        **point.stats,
        speedup=point.speedup,
        efficiency=point.efficiency,
        speedup_ci95=point.speedup_ci95,
        efficiency_ci95=point.efficiency_ci95,
        efficiency_intra_node=point.efficiency_intra_node,
        efficiency_inter_node=point.efficiency_inter_node,
        baseline_workers=point.baseline_workers,
        note="; ".join(point.notes),
    )
    return row


_COLUMN_ORDER = [
    "num_workers",
    "num_gpus",
    "num_nodes",
    "workers_per_node",
    "device_name",
    "n",
    "n_failed",
    f"{THROUGHPUT}_mean",
    f"{THROUGHPUT}_std",
    f"{THROUGHPUT}_median",
    f"{THROUGHPUT}_ci95",
    "cv",
    "speedup",
    "speedup_ci95",
    "efficiency",
    "efficiency_ci95",
    "efficiency_intra_node",
    "efficiency_inter_node",
    "baseline_workers",
    "step_time_median_s",
    "step_time_p95_s",
    "allreduce_time_s",
    "allreduce_latency_s",
    "allreduce_s_per_byte",
    *BREAKDOWN.values(),
    *(f"{part}_share" for part in BREAKDOWN),
    "achieved_tflops",
    "mfu",
    "load_imbalance",
    "slowest_rank",
    "slowest_rank_host",
    "replica_divergence",
    "loss_rank_spread",
    "sanity",
    "noisy",
    "note",
]
_INT_COLUMNS = (
    "num_workers",
    "num_gpus",
    "num_nodes",
    "workers_per_node",
    "n",
    "n_failed",
    "baseline_workers",
    "slowest_rank",
)


def _typed(out: pd.DataFrame, trials: pd.DataFrame, key_cols: list[str]) -> pd.DataFrame:
    out = out[["study", "group", *key_cols[1:], *_COLUMN_ORDER]]
    for col in _INT_COLUMNS:
        out[col] = pd.array(out[col].tolist(), dtype="Int64")
    out["noisy"] = out["noisy"].astype(bool)
    for col in key_cols:
        if col in trials.columns:
            try:
                out[col] = out[col].astype(trials[col].dtype)
            except (TypeError, ValueError):  # NA in an integer column: keep the object column
                pass
    return out.reset_index(drop=True)
