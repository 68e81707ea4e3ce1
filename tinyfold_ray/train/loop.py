"""The timed loop: untimed warm-up, then measured steps, each ended by one device synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinyfold_ray.data import SyntheticData
from tinyfold_ray.device import peak_memory_bytes, reset_peak_memory, synchronize
from tinyfold_ray.errors import TrainingError

FINITE_CHECK_EVERY = 10  # measured steps between (untimed) checks that the loss is finite


@dataclass
class LoopResult:
    step_times_s: list[float]
    losses: list[float]
    warmup_time_s: float
    peak_memory_bytes: int | None


def run_timed_loop(
    step: Callable[[tuple], torch.Tensor],
    data: SyntheticData,
    *,
    warmup_steps: int,
    num_steps: int,
    device: torch.device,
    after_warmup: Callable[[], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> LoopResult:
    """Run warm-up then `num_steps` measured steps; raise TrainingError if the loss stops being finite.

    `on_step(n)`: told, between steps and outside their timing, that n steps of the current phase
    (warm-up, then measured) are done; it must return at once (train/heartbeat.py only stores n).
    """
    on_step = on_step or (lambda done: None)
    t0 = time.perf_counter()
    warmup_losses = torch.zeros(max(warmup_steps, 1), device=device)
    for i in range(warmup_steps):
        warmup_losses[i] = step(data.next_batch())
        on_step(i + 1)
    synchronize(device)  # sync point: warm-up (compile, allocator, autotuning) ends here, untimed
    warmup_time_s = time.perf_counter() - t0
    _check_finite(warmup_losses[:warmup_steps], "warm-up step", 0)
    if after_warmup is not None:
        after_warmup()
    reset_peak_memory(device)

    losses = torch.zeros(num_steps, device=device)
    step_times = []
    for i in range(num_steps):
        batch = data.next_batch()
        start = time.perf_counter()
        losses[i] = step(batch)
        synchronize(device)  # sync point: the one that ends this step's timing
        step_times.append(time.perf_counter() - start)
        on_step(i + 1)
        if (i + 1) % FINITE_CHECK_EVERY == 0:
            _check_finite(
                losses[i + 1 - FINITE_CHECK_EVERY : i + 1], "measured step", i + 1 - FINITE_CHECK_EVERY
            )
    # The only read-back of the losses: once, after the timed steps.
    loss_values = losses.tolist()
    _check_finite(losses, "measured step", 0)
    return LoopResult(
        step_times_s=step_times,
        losses=loss_values,
        warmup_time_s=warmup_time_s,
        peak_memory_bytes=peak_memory_bytes(device),
    )


def _check_finite(losses: torch.Tensor, what: str, offset: int) -> None:
    finite = torch.isfinite(losses)
    if bool(finite.all()):  # sync point: outside any timed step
        return
    bad = int((~finite).nonzero()[0, 0])
    value = float(losses[bad])
    raise TrainingError(
        f"loss became {value} at {what} {offset + bad}: lower the learning rate, or use amp=bf16 instead of fp16"
    )
