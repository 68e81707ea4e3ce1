"""A simple scaling model: predict efficiency at larger worker counts from a small run.

A trial records its median step time and the median time of an all-reduce of one gradient's size on
its own workers. A ring all-reduce moves 2 (N - 1) / N gradient sizes per worker, so its time at N
workers is a(N) = a(N0) * ((N - 1) / N) / ((N0 - 1) / N0), from the time a(N0) measured at the
smallest multi-worker point N0 of a group. The step at N workers is modelled as the baseline step's
compute, scaled by the per-worker batch, plus a(N) with no overlap:

    step(N) = step(base) * batch_per_worker(N) / batch_per_worker(base) + a(N)

DDP overlaps the all-reduce with the backward pass, so this is a pessimistic bound
(`efficiency_predicted`). With overlap (`efficiency_predicted_overlap`) only the all-reduce wait that
did not overlap backward is added: at a measured point its own median `comm_exposed_median_s`, at a
predicted-only count the reference point's exposed time scaled like a(N):

    step_overlap(N) = step(base) * batch_per_worker(N) / batch_per_worker(base) + exposed(N)

Measured efficiency below the overlap prediction is time the model does not contain (slower compute,
optimiser, stragglers). `dominant_loss` names, per point with a recorded breakdown, the largest of:
exposed all-reduce, optimiser and straggler skew (each as a share of the point's median step), and
compute slower than the baseline's (compute(N) minus the baseline's compute scaled by the per-worker
batch, as a share of the step), e.g. "exposed all-reduce 38 % of step".

a(N0) describes the links used at N0 (within a node): across nodes, measure at 2 nodes to predict more
nodes.
"""

from __future__ import annotations

import pandas as pd

THROUGHPUT = "throughput_samples_per_sec_mean"
EXPOSED = "comm_exposed_median_s"


def ring_allreduce_time(a_ref: float, n_ref: int, n: int) -> float:
    return a_ref * ((n - 1) / n) / ((n_ref - 1) / n_ref)


def _efficiency(base: pd.Series, n: int, batch_per_worker: float, comm: float) -> float:
    """Predicted efficiency at n workers against the baseline point `base`: its step scaled to the
    per-worker batch, plus `comm` seconds of communication per step."""
    step = base["step_time_median_s"] * batch_per_worker / base["batch_per_worker"] + comm
    throughput = n * batch_per_worker / step
    return throughput / (base[THROUGHPUT] * n / base["num_workers"])


def _ring(ref: pd.Series, col: str, n: int) -> float:
    """`ref`'s measured `col` (an all-reduce time) carried to n workers by the ring factor."""
    value = ref.get(col, float("nan"))
    return ring_allreduce_time(value, int(ref["num_workers"]), n) if pd.notna(value) else float("nan")


def dominant_loss(row: pd.Series, base: pd.Series | None) -> str:
    """The largest share of the step lost to something a perfect scale-out would not have; empty
    without a recorded breakdown."""
    step = row.get("step_time_median_s")
    candidates = {
        "exposed all-reduce": row.get("comm_exposed_share"),
        "optimizer": row.get("optimizer_share"),
        "straggler skew": row.get("rank_skew_share"),
    }
    compute = row.get("compute_time_median_s", float("nan"))
    if base is not None and row["num_workers"] != base["num_workers"] and pd.notna(step) and step > 0:
        expected = base.get("compute_time_median_s", float("nan"))
        expected = expected * row["batch_per_worker"] / base["batch_per_worker"]
        candidates["slower compute"] = (compute - expected) / step
    known = {name: float(v) for name, v in candidates.items() if v is not None and pd.notna(v)}
    if not known:
        return ""
    name = max(known, key=known.get)
    return f"{name} {known[name] * 100:.0f} % of step" if known[name] > 0 else ""


def add_predictions(summary: pd.DataFrame, extra_workers: tuple[int, ...] = ()) -> pd.DataFrame:
    """`summary` with `efficiency_predicted` (no overlap), `efficiency_predicted_overlap` and
    `dominant_loss` columns, and one predicted-only row per group and extra worker count (n == 0, note
    'predicted'). Groups without an all-reduce figure get no prediction."""
    out = summary.copy()
    out["efficiency_predicted"] = float("nan")
    out["efficiency_predicted_overlap"] = float("nan")
    out["dominant_loss"] = ""
    extra_rows = []
    for _, g in out.groupby("group", sort=False):
        base = g[g["num_workers"] == g["baseline_workers"]]
        base = base.iloc[0] if not base.empty else None
        for idx, row in g.iterrows():
            out.loc[idx, "dominant_loss"] = dominant_loss(row, base)
        measured = g[(g["num_workers"] >= 2) & g["allreduce_time_s"].notna()]
        if base is None or measured.empty or pd.isna(base["step_time_median_s"]):
            continue
        ref = measured.sort_values("num_workers").iloc[0]
        for idx, row in g.iterrows():
            n = int(row["num_workers"])
            if n >= 2:
                bpw = row["batch_per_worker"]
                allreduce = _ring(ref, "allreduce_time_s", n)
                out.loc[idx, "efficiency_predicted"] = _efficiency(base, n, bpw, allreduce)
                exposed = row.get(EXPOSED, float("nan"))
                out.loc[idx, "efficiency_predicted_overlap"] = _efficiency(base, n, bpw, exposed)
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
                    "efficiency_predicted": _efficiency(base, n, bpw, _ring(ref, "allreduce_time_s", n)),
                    "efficiency_predicted_overlap": _efficiency(base, n, bpw, _ring(ref, EXPOSED, n)),
                    "dominant_loss": "",
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
