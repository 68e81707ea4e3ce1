"""Connect to Ray: join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an
embedded one on this machine."""

from __future__ import annotations

import os

# The embedded cluster has one logical CPU more than the machine has cores: trial drivers (Tune's
# function trainables) hold a sliver of a CPU, and a worker group must never wait for that sliver.
# Workers themselves get no more CPUs than there are cores, so a trial that needs more is refused.
SPARE_CPUS = 1


def connect(*, verbose: bool = False) -> str:
    """ray.init once; return 'Ray cluster at <address>' or 'embedded Ray with N CPUs' for the log."""
    import ray

    if ray.is_initialized():
        return "the connected Ray cluster"
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return f"Ray cluster at {address}"
    num_cpus = (os.cpu_count() or 1) + SPARE_CPUS
    # address="local": a new cluster of our own, even if another Ray runs on this machine.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    return f"embedded Ray with {num_cpus} logical CPUs"
