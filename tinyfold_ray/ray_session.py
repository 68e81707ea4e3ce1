"""Connect to Ray: join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an
embedded one on this machine, sized so that no worker group waits for CPUs it will never get."""

from __future__ import annotations

import os
import sys


def connect(min_cpus: float = 1, *, verbose: bool = False) -> str:
    """ray.init once; return 'cluster at <address>' or 'embedded Ray with N CPUs' for the log."""
    import ray

    if ray.is_initialized():
        return "already connected"
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return f"Ray cluster at {address}"
    # Logical CPUs are reservations, not cores: a trial must never wait for a CPU that the trial
    # driver itself holds, so the embedded cluster has at least one more than the largest trial needs.
    num_cpus = int(max(os.cpu_count() or 1, min_cpus + 1))
    ray.init(num_cpus=num_cpus, include_dashboard=False, **quiet)
    return f"embedded Ray with {num_cpus} logical CPUs (Python {sys.version.split()[0]})"
