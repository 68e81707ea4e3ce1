"""Where a step's time goes: compute (forward + backward), exposed communication, the optimiser.

Each measured step carries two marks, after backward and after the optimiser step: CUDA events on a
GPU (recorded on the stream and read after the step's own synchronisation, so they add no host sync)
or host clock readings on a CPU, where every op, gloo's all-reduce wait included, runs synchronously.
Under DDP, backward returns only once the gradient all-reduce has finished, so forward + backward
holds the compute and the part of the all-reduce that did not overlap with it. To split the two, a
short phase after the measured steps runs forward + backward without the all-reduce (DDP's `no_sync`),
with a host synchronisation around each step; its median is the compute time of a step:

    compute = min(forward + backward, reference)      exposed communication = the rest
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from tinyfold_ray.device import synchronize

REFERENCE_STEPS = 5  # timed compute-only steps after the measured ones (plus one untimed first)


class StepMarks:
    """The begin, after-backward and after-optimiser marks of each step since the last `clear`."""

    def __init__(self, device: torch.device):
        self._events = device.type == "cuda"
        self._steps: list[list] = []

    def _now(self):
        if self._events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def begin(self) -> None:
        self._steps.append([self._now()])

    def mark(self) -> None:
        self._steps[-1].append(self._now())

    def clear(self) -> None:
        self._steps = []

    def durations(self) -> tuple[list[float], list[float]]:
        """(forward + backward seconds, optimiser seconds) per step; only after the device synchronised."""
        fwd_bwd, optimizer = [], []
        for begin, backward, done in self._steps:
            if self._events:
                fwd_bwd.append(begin.elapsed_time(backward) / 1e3)
                optimizer.append(backward.elapsed_time(done) / 1e3)
            else:
                fwd_bwd.append(backward - begin)
                optimizer.append(done - backward)
        return fwd_bwd, optimizer


def compute_reference_s(
    forward_backward: Callable[[tuple], None],
    next_batch: Callable[[], tuple],
    model: torch.nn.Module,
    device: torch.device,
) -> float:
    """Median time of forward + backward with no gradient all-reduce (after the measured steps)."""
    no_sync = getattr(model, "no_sync", contextlib.nullcontext)
    times = []
    with no_sync():
        for i in range(REFERENCE_STEPS + 1):
            batch = next_batch()
            synchronize(device)  # sync point: this phase is outside the measurement, timed per step
            start = time.perf_counter()
            forward_backward(batch)
            synchronize(device)  # sync point: ends this compute-only step
            if i > 0:  # the first may (re)compile for the no_sync path
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def split_steps(
    fwd_bwd_s: Sequence[float], optimizer_s: Sequence[float], reference_s: float | None
) -> dict[str, list[float]]:
    """Per step: compute, exposed communication and optimiser seconds (no reference: no all-reduce)."""
    compute = list(fwd_bwd_s) if reference_s is None else [min(t, reference_s) for t in fwd_bwd_s]
    return {
        "compute_time_s": compute,
        "comm_exposed_s": [t - c for t, c in zip(fwd_bwd_s, compute, strict=True)],
        "optimizer_time_s": list(optimizer_s),
    }
