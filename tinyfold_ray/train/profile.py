"""`profile: true`: a torch.profiler trace per rank of a few steps after the measured ones.

The trace is Chrome's trace format (open it in https://ui.perfetto.dev or chrome://tracing). It is
written locally, then copied next to the trial's results (a path or a pyarrow URI), because the rank
may run on another node than the one that reads the results.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from tinyfold_ray.results.storage import atomic_write_bytes, join, resolve

PROFILE_STEPS = 3


def save_profile(
    step: Callable[[tuple], torch.Tensor], next_batch: Callable[[], tuple], location: str, rank: int
) -> str:
    """Profile PROFILE_STEPS steps; write `<location>/rank<rank>.json`; return that path."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            step(next_batch())
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # sync point: the profiled kernels end before the trace is cut
    name = f"rank{rank}.json"
    fs, directory = resolve(location)
    with tempfile.TemporaryDirectory(prefix="tinyfold-profile-") as tmp:
        local = os.path.join(tmp, name)
        prof.export_chrome_trace(local)
        with open(local, "rb") as trace:
            data = trace.read()
    atomic_write_bytes(fs, directory, name, data)
    return join(location, name)
