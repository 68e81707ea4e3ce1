"""The scaling model on a hand-built summary with known answers (pure pandas)."""

import pandas as pd
import pytest

from tinyfold_ray.results.scaling_model import add_predictions, ring_allreduce_time


def _summary(scaling="weak"):
    # Baseline: 1 worker, 1.0 s per step at 4 samples; the all-reduce at 2 workers took 0.2 s.
    rows = [
        {
            "num_workers": 1,
            "batch_per_worker": 4,
            "global_batch": 4,
            "step_time_median_s": 1.0,
            "allreduce_time_s": None,
        },
        {
            "num_workers": 2,
            "batch_per_worker": 4,
            "global_batch": 8,
            "step_time_median_s": 1.3,
            "allreduce_time_s": 0.2,
        },
    ]
    frame = pd.DataFrame(rows)
    frame["throughput_samples_per_sec_mean"] = frame.global_batch / frame.step_time_median_s
    frame["study"], frame["group"], frame["scaling"], frame["baseline_workers"] = "s", "g", scaling, 1
    return frame


def test_ring_allreduce_grows_towards_twice_the_two_worker_time():
    assert ring_allreduce_time(0.2, 2, 2) == pytest.approx(0.2)
    assert ring_allreduce_time(0.2, 2, 4) == pytest.approx(0.3)
    assert ring_allreduce_time(0.2, 2, 1000) == pytest.approx(0.4, rel=1e-2)


def test_predicted_efficiency_next_to_measured_and_for_larger_counts():
    out = add_predictions(_summary(), extra_workers=(4, 8))
    by_n = out.set_index("num_workers")
    # N=2: step 1.0 + 0.2 -> efficiency 1/1.2; N=4: 1.0 + 0.3; N=8: 1.0 + 0.2*(7/8)/(1/2) = 1.35
    assert by_n.loc[2, "efficiency_predicted"] == pytest.approx(1 / 1.2)
    assert by_n.loc[4, "efficiency_predicted"] == pytest.approx(1 / 1.3)
    assert by_n.loc[8, "efficiency_predicted"] == pytest.approx(1 / 1.35)
    assert by_n.loc[8, "note"].startswith("predicted from N=2") and by_n.loc[8, "n"] == 0
    assert pd.isna(by_n.loc[1, "efficiency_predicted"])
    assert list(out.num_workers) == [1, 2, 4, 8]


def test_strong_scaling_prediction_shrinks_the_per_worker_compute():
    frame = _summary("strong")
    out = add_predictions(frame, extra_workers=(4,)).set_index("num_workers")
    # 4 workers share the global batch of 4: compute 1.0 * 1/4, plus 0.3 s of all-reduce.
    assert out.loc[4, "efficiency_predicted"] == pytest.approx((4 / (0.25 + 0.3)) / (4 * 4.0))


def test_no_allreduce_figure_means_no_prediction():
    frame = _summary()
    frame["allreduce_time_s"] = None
    out = add_predictions(frame, extra_workers=(8,))
    assert out.efficiency_predicted.isna().all() and len(out) == 2


def test_overlap_prediction_uses_the_exposed_wait_and_the_dominant_loss_is_named():
    frame = _summary()
    # Measured breakdown at 2 workers (step 1.3 s): compute 1.0, 0.1 s of exposed all-reduce,
    # optimiser 0.05; the baseline's compute is 0.9 of its 1.0 s step.
    frame["compute_time_median_s"] = [0.9, 1.0]
    frame["comm_exposed_median_s"] = [0.0, 0.1]
    frame["comm_exposed_share"] = frame.comm_exposed_median_s / frame.step_time_median_s
    frame["optimizer_share"] = [0.1, 0.05 / 1.3]
    frame["rank_skew_share"] = [0.0, 0.01 / 1.3]
    out = add_predictions(frame, extra_workers=(4,)).set_index("num_workers")
    # With overlap only the exposed 0.1 s is added to the baseline's 1.0 s step: 1 / 1.1.
    assert out.loc[2, "efficiency_predicted_overlap"] == pytest.approx(1 / 1.1)
    assert out.loc[2, "efficiency_predicted"] == pytest.approx(1 / 1.2)  # the whole all-reduce
    # At 4 workers the exposed time grows like the ring: 0.1 * (3/4) / (1/2) = 0.15.
    assert out.loc[4, "efficiency_predicted_overlap"] == pytest.approx(1 / 1.15)
    frame["compute_time_median_s"] = [0.9, 1.2]  # 0.3 s slower: 23 % of the 1.3 s step
    out = add_predictions(frame).set_index("num_workers")
    assert out.loc[2, "dominant_loss"] == "slower compute 23 % of step"
    assert out.loc[1, "dominant_loss"] == "optimizer 10 % of step"  # the baseline: no comparison


def _alpha_beta_group(points, *, step=1.0):
    """A weak-scaling group: 1 worker at `step` s per 4 samples, then (workers, nodes, all-reduce s,
    latency s) per multi-worker point, each step the baseline's plus its whole all-reduce."""
    rows = [dict(num_workers=1, num_nodes=1, step_time_median_s=step)]
    for workers, nodes, allreduce, latency in points:
        rows.append(
            dict(
                num_workers=workers,
                num_nodes=nodes,
                step_time_median_s=step + allreduce,
                allreduce_time_s=allreduce,
                allreduce_latency_s=latency,
            )
        )
    frame = pd.DataFrame(rows)
    frame["batch_per_worker"], frame["global_batch"] = 4, 4 * frame.num_workers
    frame["throughput_samples_per_sec_mean"] = frame.global_batch / frame.step_time_median_s
    frame["study"], frame["group"], frame["scaling"], frame["baseline_workers"] = "s", "g", "weak", 1
    return frame


def test_ring_latency_term_grows_with_the_steps_of_the_ring():
    # 0.2 s at 2 workers, 0.05 s of it latency: at 4 workers 0.05 * 3 + 0.15 * (3/4) / (1/2) = 0.375.
    assert ring_allreduce_time(0.2, 2, 4, latency_ref=0.05) == pytest.approx(0.375)
    # At 1,000 workers the bandwidth part tends to 0.3 but the latency part is 0.05 * 999.
    assert ring_allreduce_time(0.2, 2, 1000, latency_ref=0.05) == pytest.approx(49.95 + 0.15 * 1.998)


def test_prediction_carries_the_largest_point_with_its_latency():
    # 2 workers: 0.2 s (0.05 latency); 4 workers: 0.35 s (0.15 latency, 0.2 bandwidth).
    frame = _alpha_beta_group([(2, 1, 0.2, 0.05), (4, 1, 0.35, 0.15)])
    out = add_predictions(frame, extra_workers=(8,)).set_index("num_workers")
    # From N0=4: latency 0.15 * 7/3 = 0.35, bandwidth 0.2 * (7/8) / (3/4) = 0.2333: a(8) = 0.58333.
    # (The bandwidth-only model from N=2 said 0.2 * (7/8) / (1/2) = 0.35: 1 / 1.35, optimistic.)
    assert out.loc[8, "efficiency_predicted"] == pytest.approx(1 / (1 + 0.35 + 0.2 * 7 / 6))
    assert out.loc[8, "note"] == "predicted from N=4 on 1 node: assumes intra-node bandwidth and latency"
    # A measured point is predicted from its own all-reduce: 1 / 1.2 at 2, 1 / 1.35 at 4.
    assert out.loc[2, "efficiency_predicted"] == pytest.approx(1 / 1.2)
    assert out.loc[4, "efficiency_predicted"] == pytest.approx(1 / 1.35)


def test_prediction_past_one_node_uses_the_inter_node_fit():
    # 8 workers on one node: 0.3 s (0.07 latency); 16 workers on 2 nodes: 1.0 s (0.3 latency).
    frame = _alpha_beta_group([(8, 1, 0.3, 0.07), (16, 2, 1.0, 0.3)])
    out = add_predictions(frame, extra_workers=(32,)).set_index("num_workers")
    # From N0=16 on 2 nodes: latency 0.3 * 31/15 = 0.62, bandwidth 0.7 * (31/32) / (15/16) = 0.72333.
    assert out.loc[32, "efficiency_predicted"] == pytest.approx(1 / (1 + 0.62 + 0.7 * 31 / 30))
    assert out.loc[32, "note"] == "predicted from N=16 on 2 nodes (inter-node fit)"


def test_a_point_without_latency_is_predicted_bandwidth_only_and_says_so():
    frame = _summary()
    out = add_predictions(frame, extra_workers=(4,)).set_index("num_workers")
    assert out.loc[4, "efficiency_predicted"] == pytest.approx(1 / 1.3)
    assert out.loc[4, "note"].endswith("bandwidth-only (no latency measured)")


def test_a_multi_worker_baseline_does_not_count_its_own_all_reduce_twice():
    frame = _alpha_beta_group([(2, 1, 0.2, 0.0), (4, 1, 0.3, 0.0)]).iloc[1:].copy()
    frame["baseline_workers"] = 2
    frame["comm_exposed_median_s"] = [0.2, 0.3]  # nothing overlapped: steps 1.2 and 1.3
    out = add_predictions(frame).set_index("num_workers")
    # Work 1.2 - 0.2 = 1.0; at 4 workers 1.0 + 0.3 = 1.3 s: efficiency (16 / 1.3) / (8 / 1.2 * 4 / 2).
    assert out.loc[4, "efficiency_predicted"] == pytest.approx(1.2 / 1.3)
    assert out.loc[2, "efficiency_predicted"] == pytest.approx(1.0)


def test_a_slow_rank_is_named_as_the_straggler_not_as_the_all_reduce():
    frame = _summary()
    # 2 workers, step 1.5 s: the other rank computes 1.0 s, the slowest (rank 1 on node-b) 1.5 s, so
    # the fast rank waits 0.5 s inside backward: 0.55 s of "exposed all-reduce", 0.5 of it the wait.
    frame["step_time_median_s"] = [1.0, 1.5]
    frame["compute_time_median_s"] = [1.0, 1.0]
    frame["comm_exposed_median_s"] = [0.0, 0.55]
    frame["comm_exposed_share"] = frame.comm_exposed_median_s / frame.step_time_median_s
    frame["optimizer_share"] = [0.0, 0.0]
    frame["rank_skew_share"] = [0.0, 0.01]
    frame["load_imbalance"] = [None, 1.5]
    frame["slowest_rank"] = pd.array([None, 1], dtype="Int64")
    frame["slowest_rank_host"] = [None, "node-b"]
    out = add_predictions(frame).set_index("num_workers")
    assert out.loc[2, "dominant_loss"] == "straggler rank 1 (node-b) 33 % of step"  # 0.5 / 1.5
    # Balanced ranks: the same wait is the all-reduce's.
    frame["load_imbalance"] = [None, 1.0]
    out = add_predictions(frame).set_index("num_workers")
    assert out.loc[2, "dominant_loss"] == "exposed all-reduce 37 % of step"  # 0.55 / 1.5
