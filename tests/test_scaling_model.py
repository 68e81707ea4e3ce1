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
    assert by_n.loc[8, "note"] == "predicted" and by_n.loc[8, "n"] == 0
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
