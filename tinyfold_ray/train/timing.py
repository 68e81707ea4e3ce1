"""Step-time statistics of a trial (numpy only): a step lasts as long as its slowest rank."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def step_stats(step_times_by_rank: Sequence[Sequence[float]], global_batch: int) -> dict[str, float]:
    """Median, mean and p95 of the per-step time (max over ranks) and the throughput they give."""
    times = np.asarray(step_times_by_rank, dtype=float)
    assert times.ndim == 2 and times.size > 0, "expected [ranks, steps] step times"
    slowest = times.max(axis=0)
    median = float(np.median(slowest))
    mean = float(slowest.mean())
    return {
        "step_time_median_s": median,
        "step_time_mean_s": mean,
        "step_time_p95_s": float(np.percentile(slowest, 95)),
        "throughput_samples_per_sec": global_batch / median,
        "throughput_mean_samples_per_sec": global_batch / mean,
    }
