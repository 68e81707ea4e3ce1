"""A simple scaling model: predict efficiency at larger worker counts from a small run.

A trial records its median step time and the median time of an all-reduce of one gradient's size on
its own workers. A ring all-reduce moves 2 (N - 1) / N gradient sizes per worker, so its time at N
workers is a(N) = a(N0) * ((N - 1) / N) / ((N0 - 1) / N0), from the time a(N0) measured at the
smallest multi-worker point N0 of a group. The step at N workers is modelled as the baseline step's
compute, scaled by the per-worker batch, plus a(N) with no overlap:

    step(N) = step(base) * batch_per_worker(N) / batch_per_worker(base) + a(N)

DDP overlaps the all-reduce with the backward pass, so this is a pessimistic bound; and a(N0) describes
the links used at N0 (within a node): across nodes, measure at 2 nodes to predict more nodes.
"""

from __future__ import annotations

import pandas as pd

THROUGHPUT = "throughput_samples_per_sec_mean"


def ring_allreduce_time(a_ref: float, n_ref: int, n: int) -> float:
    return a_ref * ((n - 1) / n) / ((n_ref - 1) / n_ref)


def _efficiency(base: pd.Series, ref: pd.Series, n: int, batch_per_worker: float) -> float:
    """Predicted efficiency at n workers against the baseline point `base`; `ref` holds the measured
    all-reduce."""
    compute = base["step_time_median_s"] * batch_per_worker / base["batch_per_worker"]
    step = compute + ring_allreduce_time(ref["allreduce_time_s"], int(ref["num_workers"]), n)
    throughput = n * batch_per_worker / step
    return throughput / (base[THROUGHPUT] * n / base["num_workers"])


def add_predictions(summary: pd.DataFrame, extra_workers: tuple[int, ...] = ()) -> pd.DataFrame:
    """`summary` with an `efficiency_predicted` column, and one predicted-only row per group and extra
    worker count (n == 0, note 'predicted'). Groups without an all-reduce figure get no prediction."""
    out = summary.copy()
    out["efficiency_predicted"] = float("nan")
    extra_rows = []
    for _, g in out.groupby("group", sort=False):
        base = g[g["num_workers"] == g["baseline_workers"]]
        measured = g[(g["num_workers"] >= 2) & g["allreduce_time_s"].notna()]
        if base.empty or measured.empty or pd.isna(base["step_time_median_s"].iloc[0]):
            continue
        base = base.iloc[0]
        ref = measured.sort_values("num_workers").iloc[0]
        for idx, row in g.iterrows():
            if row["num_workers"] >= 2:
                out.loc[idx, "efficiency_predicted"] = _efficiency(
                    base, ref, int(row["num_workers"]), row["batch_per_worker"]
                )
        for n in sorted(set(extra_workers) - set(g["num_workers"].astype(int))):
            # Weak scaling keeps the batch per worker; strong scaling divides the group's global batch.
            strong = base.get("scaling") == "strong"
            bpw = base["global_batch"] / n if strong else base["batch_per_worker"]
            predicted = {
                c: base[c] for c in ("study", "group", "scaling", "baseline_workers") if c in g.columns
            }
            extra_rows.append(
                {
                    **predicted,
                    "num_workers": n,
                    "n": 0,
                    "efficiency_predicted": _efficiency(base, ref, n, bpw),
                    "note": "predicted",
                }
            )
    if extra_rows:
        order = {group: i for i, group in enumerate(out["group"].unique())}
        out = pd.concat([out, pd.DataFrame(extra_rows)], ignore_index=True)
        out = out.sort_values(
            ["group", "num_workers"], key=lambda c: c.map(order) if c.name == "group" else c
        )
        out = out.reset_index(drop=True)
    return out
