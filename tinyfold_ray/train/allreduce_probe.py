"""The all-reduce probe: what one fp32 all-reduce costs on this worker group, as latency + bytes x time.

A trial (worker.py) and `--validate-setup` (validate.py) both measure through here, so their figures
mean the same thing. Each size is timed the same way:

- one untimed call first (it sets up the communicator and its buffers);
- before every timed call a barrier (a one-element all-reduce, then a device synchronise), so no rank
  starts its clock while another is still busy: without it the early rank's time includes its wait;
- a few repeats, this rank's median, then the maximum over ranks (a collective lasts as long as its
  slowest rank), so every rank returns the same figures.

The medians at two or more sizes are fitted to t(bytes) = latency + bytes x s_per_byte (the alpha-beta
model of a collective) for the scaling model (results/scaling_model.py), which carries the two terms
to other worker counts separately: a bandwidth-only figure would understate small messages and large
rings, whose cost is mostly latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from tinyfold_ray.device import synchronize

PROBE_REPEATS = 5
# A message this small costs (almost) only latency; the gradient's size mostly bandwidth; one in
# between checks that the line through them holds.
SMALL_PROBE_NUMEL = 256
MIDDLE_PROBE_FRACTION = 16
FP32_BYTES = 4


def probe_sizes(num_params: int) -> list[int]:
    """Element counts to time for a gradient of `num_params` fp32 values: at least two distinct sizes,
    the gradient's own among them."""
    assert num_params >= 1, f"num_params must be positive, got {num_params}"
    return sorted({SMALL_PROBE_NUMEL, num_params // MIDDLE_PROBE_FRACTION, num_params} - {0})


def fit_alpha_beta(num_bytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """(latency_s, s_per_byte) of t = latency + bytes x s_per_byte fitted to the measured points.

    Least squares on relative residuals (each point weighted by 1 / t): the small message's few
    microseconds then fix the latency instead of drowning in the large message's noise. Neither term
    may be negative (a negative one is noise, not physics): when one comes out below zero it is set to
    0 and the other refitted alone.
    """
    x = np.asarray(num_bytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    assert x.shape == t.shape and len(np.unique(x)) >= 2, "need times at two or more distinct sizes"
    assert (t > 0).all(), f"all-reduce times must be positive, got {t.tolist()}"
    w = 1.0 / t
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    (latency, s_per_byte), *_ = np.linalg.lstsq(design, t * w, rcond=None)
    if latency < 0:
        latency, s_per_byte = 0.0, float(np.sum(w * w * x * t) / np.sum(w * w * x * x))
    elif s_per_byte < 0:
        latency, s_per_byte = float(np.sum(w * w * t) / np.sum(w * w)), 0.0
    return float(latency), float(s_per_byte)


def time_allreduce(numel: int, device: torch.device, repeats: int = PROBE_REPEATS) -> float:
    """Collective: this rank's median seconds of a barriered fp32 all-reduce of `numel` elements."""
    buffer = torch.ones(numel, dtype=torch.float32, device=device)
    token = torch.zeros(1, dtype=torch.float32, device=device)
    dist.all_reduce(buffer)  # first call sets up the communicator: untimed
    times = []
    for _ in range(repeats):
        dist.all_reduce(token)  # barrier: every rank has reached this call before any starts its clock
        synchronize(device)  # sync point: the barrier (and anything queued) is done, outside the timing
        start = time.perf_counter()
        dist.all_reduce(buffer)
        synchronize(device)  # sync point: ends the timed collective
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def max_over_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Collective: the element-wise maximum of `values` over all ranks (the same list on every rank)."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()  # sync point: outside any timing


def allreduce_times(sizes: Sequence[int], device: torch.device, repeats: int = PROBE_REPEATS) -> list[float]:
    """Collective: per size (fp32 elements), the median all-reduce seconds, maximum over ranks."""
    return max_over_ranks([time_allreduce(numel, device, repeats) for numel in sizes], device)


def probe_points(num_params: int, device: torch.device) -> tuple[list[int], list[float]]:
    """Collective: the sizes `probe_sizes` picks (fp32 elements) and their times (`allreduce_times`)."""
    sizes = probe_sizes(num_params)
    return sizes, allreduce_times(sizes, device)


def probe_allreduce(num_params: int, device: torch.device) -> dict[str, float | None]:
    """Collective: every rank of the initialised process group calls it. Returns
    {"allreduce_time_s", "allreduce_latency_s", "allreduce_s_per_byte"}: the same values on every rank
    (each size's per-rank median, max over ranks); all None when the world size is 1."""
    if dist.get_world_size() == 1:
        return {"allreduce_time_s": None, "allreduce_latency_s": None, "allreduce_s_per_byte": None}
    sizes, seconds = probe_points(num_params, device)
    latency, s_per_byte = fit_alpha_beta([FP32_BYTES * n for n in sizes], seconds)
    return {
        "allreduce_time_s": seconds[sizes.index(num_params)],
        "allreduce_latency_s": latency,
        "allreduce_s_per_byte": s_per_byte,
    }
