"""A latency + bandwidth (alpha-beta) scaling model: efficiency at other worker counts from measured points.

Each multi-worker trial probes its own all-reduce (train/allreduce_probe.py: barriered, the slowest
rank's median, at two or more message sizes) and records the time of one gradient-sized all-reduce,
`allreduce_time_s`, and the fit t(bytes) = `allreduce_latency_s` + bytes x `allreduce_s_per_byte` on
its own workers and nodes. A ring all-reduce at N workers takes 2 (N - 1) steps and moves
2 (N - 1) / N gradient sizes per worker, so a time a(N0) measured at N0 workers, latency alpha(N0) of
it, carries to N workers as

    a(N) = alpha(N0) * (N - 1) / (N0 - 1)  +  (a(N0) - alpha(N0)) * ((N - 1) / N) / ((N0 - 1) / N0)

(`ring_allreduce_time`). The latency term grows without bound, the bandwidth term tends to twice its
2-worker value: a bandwidth-only model understates large rings and small gradients. The bandwidth
term is the measured a(N0) less the latency (the gradient's size times `allreduce_s_per_byte`, read at
the measured point instead of through the fit). Where a point has no latency figure (results from
before the probe fitted one) its whole a(N0) is taken as bandwidth, and the predicted row says so.

The step at N workers is the baseline step's work, scaled to the per-worker batch, plus a(N):

    step(N) = work(base) * batch_per_worker(N) / batch_per_worker(base) + a(N)       (no overlap)

where work(base) is the baseline's median step, less its own exposed all-reduce when the baseline
itself has several workers. `efficiency_predicted` is this step's efficiency. It adds the whole
all-reduce, so it is an upper bound on the step (a lower bound on efficiency) only under these
assumptions, each of which a real run can break:
- the step's work scales linearly with the per-worker batch (strong scaling: a small per-worker batch
  usually runs less efficiently, e.g. launch-bound on a GPU, so this term is then optimistic);
- every rank computes as fast as the baseline (no straggler: `load_imbalance` is not in the model);
- DDP's all-reduce costs what one all-reduce of the whole gradient costs (each further DDP bucket adds
  about one latency term);
- the links at N behave like those of the reference point (below) and the library runs a ring (a
  tree's latency grows like log N, so the ring overstates it).

With overlap (`efficiency_predicted_overlap`) only the all-reduce wait that did not overlap backward is
added: at a measured point its own median `comm_exposed_median_s`, at a predicted-only count the
reference point's exposed time scaled by a(N) / a(N0) (the same exposed fraction of the all-reduce).

At a measured point the model uses that point's own all-reduce time; a predicted-only count carries
the reference point's. The reference is the measured multi-worker point with the most nodes and,
among those, the most workers, not the smallest: a 2-worker point usually talks over the best link a
machine has (one direct GPU link, one NUMA domain), and from it the ring factors extrapolate furthest
and keep its fast links, so the prediction is optimistic; the largest point already contains the
links, hops and latency that a larger run crosses, and sits nearest to the counts predicted. A
prediction from a single-node reference assumes intra-node bandwidth and latency at every count, also
past one node: its row's note says so; measure at two nodes (trials with num_nodes > 1 record their
own fit) to predict more nodes.

Measured efficiency below the overlap prediction is time the model does not contain (slower compute,
optimiser, stragglers). `dominant_loss` names, per point with a recorded breakdown, the largest of:
exposed all-reduce, optimiser, straggler skew (each as a share of the point's median step), compute
slower than the baseline's (compute(N) minus the baseline's compute scaled by the per-worker batch),
and a straggler rank. Under DDP a fast rank waits inside backward for the slowest one, so a rank that
computes slower shows up as exposed all-reduce on every rank; with `load_imbalance` (slowest rank's
compute over the median of the other ranks') above 1, the part of the exposed all-reduce that this explains,

    straggler wait = min(comm_exposed, (load_imbalance - 1) * compute),

is named "straggler rank r (host) x % of step", and only the rest counts as exposed all-reduce.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

THROUGHPUT = "throughput_samples_per_sec_mean"
EXPOSED = "comm_exposed_median_s"
ALLREDUCE = "allreduce_time_s"
LATENCY = "allreduce_latency_s"


def ring_allreduce_time(a_ref: float, n_ref: int, n: int, latency_ref: float = 0.0) -> float:
    """An all-reduce measured to take `a_ref` seconds at `n_ref` workers, `latency_ref` of it latency,
    carried to `n` workers by the ring's factors (module docstring)."""
    latency = min(max(latency_ref, 0.0), a_ref)  # a latency above the whole time is fit noise
    bandwidth = a_ref - latency
    return latency * (n - 1) / (n_ref - 1) + bandwidth * ((n - 1) / n) / ((n_ref - 1) / n_ref)


def _get(row: pd.Series, col: str) -> float:
    value = row.get(col)
    return float(value) if value is not None and pd.notna(value) else math.nan


def _allreduce_at(ref: pd.Series, n: int) -> float:
    """`ref`'s measured gradient all-reduce carried to n workers (bandwidth-only without a latency)."""
    latency = _get(ref, LATENCY)
    a_ref = _get(ref, ALLREDUCE)
    return ring_allreduce_time(a_ref, int(ref["num_workers"]), n, 0.0 if math.isnan(latency) else latency)


def _work_s(base: pd.Series) -> float:
    """The baseline's step without its own exposed all-reduce (there is none at one worker)."""
    exposed = _get(base, EXPOSED)
    if int(base["num_workers"]) >= 2 and not math.isnan(exposed):
        return base["step_time_median_s"] - exposed
    return base["step_time_median_s"]


def _efficiency(base: pd.Series, n: int, batch_per_worker: float, comm: float) -> float:
    """Predicted efficiency at n workers against the baseline point `base`: its work scaled to the
    per-worker batch, plus `comm` seconds of communication per step."""
    step = _work_s(base) * batch_per_worker / base["batch_per_worker"] + comm
    throughput = n * batch_per_worker / step
    return throughput / (base[THROUGHPUT] * n / base["num_workers"])


def _reference(g: pd.DataFrame) -> pd.Series | None:
    """The point predictions extrapolate from: the most nodes, then the most workers (module docstring)."""
    if ALLREDUCE not in g.columns:
        return None
    measured = g[(g["num_workers"] >= 2) & g[ALLREDUCE].notna()]
    if measured.empty:
        return None
    nodes = measured["num_nodes"].astype(float).fillna(1) if "num_nodes" in measured.columns else 1
    order = measured.assign(_nodes=nodes).sort_values(["_nodes", "num_workers"], kind="stable")
    return order.iloc[-1]


def _prediction_note(ref: pd.Series) -> str:
    nodes = _get(ref, "num_nodes")
    where = f"N={int(ref['num_workers'])}"
    if nodes > 1:
        note = f"predicted from {where} on {int(nodes)} nodes (inter-node fit)"
    else:
        on = " on 1 node" if nodes == 1 else ""
        note = f"predicted from {where}{on}: assumes intra-node bandwidth and latency"
    if math.isnan(_get(ref, LATENCY)):
        note += "; bandwidth-only (no latency measured)"
    return note


def straggler_wait_s(row: pd.Series) -> float:
    """Seconds of the point's exposed all-reduce that are the fast ranks waiting for the slowest rank's
    compute: min(exposed, (load_imbalance - 1) x compute); 0 when balanced or not recorded."""
    wait = (_get(row, "load_imbalance") - 1) * _get(row, "compute_time_median_s")
    wait = min(_get(row, EXPOSED), wait)
    return wait if wait > 0 else 0.0  # NaN compares False


def _straggler_name(row: pd.Series) -> str:
    rank, host = row.get("slowest_rank"), row.get("slowest_rank_host")
    name = "straggler"
    name += f" rank {int(rank)}" if rank is not None and pd.notna(rank) else ""
    name += f" ({host})" if host is not None and pd.notna(host) and str(host) else ""
    return name


def dominant_loss(row: pd.Series, base: pd.Series | None) -> str:
    """The largest share of the step lost to something a perfect scale-out would not have; empty
    without a recorded breakdown."""
    step = _get(row, "step_time_median_s")
    straggler = straggler_wait_s(row) / step if step > 0 else 0.0
    candidates: dict[str, Any] = {
        "exposed all-reduce": _get(row, "comm_exposed_share") - straggler,
        "optimizer": row.get("optimizer_share"),
        "straggler skew": row.get("rank_skew_share"),
    }
    if straggler > 0:
        candidates[_straggler_name(row)] = straggler
    if base is not None and row["num_workers"] != base["num_workers"] and step > 0:
        expected = _get(base, "compute_time_median_s") * row["batch_per_worker"] / base["batch_per_worker"]
        candidates["slower compute"] = (_get(row, "compute_time_median_s") - expected) / step
    known = {name: float(v) for name, v in candidates.items() if v is not None and pd.notna(v)}
    if not known:
        return ""
    name = max(known, key=known.get)
    return f"{name} {known[name] * 100:.0f} % of step" if known[name] > 0 else ""


def add_predictions(summary: pd.DataFrame, extra_workers: tuple[int, ...] = ()) -> pd.DataFrame:
    """`summary` with `efficiency_predicted` (no overlap), `efficiency_predicted_overlap` and
    `dominant_loss` columns, and one predicted-only row per group and extra worker count (n == 0, note
    'predicted from ...', saying which point and links it assumes). Groups without an all-reduce figure
    get no prediction."""
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
        ref = _reference(g)
        if base is None or ref is None or pd.isna(base["step_time_median_s"]):
            continue
        for idx, row in g.iterrows():
            n = int(row["num_workers"])
            if n >= 2:
                bpw = row["batch_per_worker"]
                own = _get(row, ALLREDUCE)
                allreduce = own if not math.isnan(own) else _allreduce_at(ref, n)
                out.loc[idx, "efficiency_predicted"] = _efficiency(base, n, bpw, allreduce)
                out.loc[idx, "efficiency_predicted_overlap"] = _efficiency(base, n, bpw, _get(row, EXPOSED))
        a_ref = _get(ref, ALLREDUCE)
        exposed_fraction = _get(ref, EXPOSED) / a_ref if a_ref > 0 else math.nan
        for n in sorted(set(extra_workers) - set(g["num_workers"].astype(int))):
            # Weak scaling keeps the batch per worker; strong scaling divides the group's global batch.
            strong = base.get("scaling") == "strong"
            bpw = base["global_batch"] / n if strong else base["batch_per_worker"]
            predicted = {
                c: base[c] for c in ("study", "group", "scaling", "baseline_workers") if c in g.columns
            }
            allreduce = _allreduce_at(ref, n)
            extra_rows.append(
                {
                    **predicted,
                    "num_workers": n,
                    "n": 0,
                    "efficiency_predicted": _efficiency(base, n, bpw, allreduce),
                    "efficiency_predicted_overlap": _efficiency(base, n, bpw, allreduce * exposed_fraction),
                    "dominant_loss": "",
                    "note": _prediction_note(ref),
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
