"""Statistics of a trial's measured steps (numpy only): a step lasts as long as its slowest rank."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# first_loss / final_loss average the first / last k measured steps (k = LOSS_WINDOW_STEPS, at most a
# quarter of the steps, at least 1), over every rank: one step's loss is noisy (a few samples), and a
# short run compared step 0 with its last step flags "loss did not fall" by chance.
LOSS_WINDOW_STEPS = 5


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


def loss_window(num_steps: int) -> int:
    """k: how many measured steps first_loss and final_loss each average."""
    return max(1, min(LOSS_WINDOW_STEPS, num_steps // 4))


def loss_ends(losses_by_rank: Sequence[Sequence[float]]) -> dict[str, float]:
    """first_loss and final_loss: the mean loss over every rank of the first and the last k steps."""
    losses = np.asarray(losses_by_rank, dtype=float)
    assert losses.ndim == 2 and losses.size > 0, "expected [ranks, steps] losses"
    k = loss_window(losses.shape[1])
    return {"first_loss": float(losses[:, :k].mean()), "final_loss": float(losses[:, -k:].mean())}
