"""Connect to Ray: join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an
embedded one on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

# The embedded cluster has one logical CPU more than the machine has cores: trial drivers (Tune's
# function trainables) hold a sliver of a CPU, and a worker group must never wait for that sliver.
# Workers themselves get no more CPUs than there are cores, so a trial that needs more is refused.
SPARE_CPUS = 1

# Since Ray 2.59 every new local cluster turns token authentication on and this logger warns about it
# at each start, advising RAY_AUTH_MODE=disabled "to opt out". For the embedded cluster, which only
# this process starts, uses and stops, the token (generated once in ~/.ray/auth_token) costs nothing,
# and opting out would open the cluster's ports to anyone who can reach this machine: the token stays
# on and the advice is dropped. A cluster joined through RAY_ADDRESS keeps its own settings and logs.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def embedded_cpus() -> int:
    """Logical CPUs of the embedded cluster: this machine's, plus the spare for trial drivers."""
    return (os.cpu_count() or 1) + SPARE_CPUS


def describe_embedded(num_cpus: int) -> str:
    """What the embedded cluster is, for the log: its CPU count, and where the odd one comes from."""
    if num_cpus == embedded_cpus():
        return (
            f"embedded Ray with {num_cpus} logical CPUs (this machine's {num_cpus - SPARE_CPUS} "
            f"+ {SPARE_CPUS} for trial drivers)"
        )
    return f"embedded Ray with {num_cpus} logical CPUs"


@contextlib.contextmanager
def without_token_notice() -> Iterator[None]:
    """Drop Ray's warnings about token authentication while an embedded cluster starts (see above)."""
    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def make_state_api_fail_fast() -> None:
    """Point Ray's state API at a closed loopback port, for clusters started by this process.

    Ray Train's placement-group cleaner asks the state API (served by the dashboard) whether the
    controller lives, with a 10 s timeout, and a trial's end waits for it: 12 s per trial when there
    is no dashboard, or when a stale /tmp/ray/ray_current_cluster (left by any earlier `ray start`)
    points the lookup at a dead cluster. A refused connection answers at once. The cleaner only
    matters if a controller dies uncleanly, and then an embedded cluster dies with its driver anyway.
    Must run before the cluster starts: its processes inherit this environment.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")


def connect(*, verbose: bool = False, num_cpus: int | None = None) -> str:
    """ray.init once; return 'Ray cluster at <address>' or 'embedded Ray with N logical CPUs (...)'
    for the log. `verbose` also shows Ray's own warnings at start-up, the token notice included."""
    import ray

    if ray.is_initialized():
        return "the connected Ray cluster"
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        return f"Ray cluster at {address}"
    if num_cpus is None:
        num_cpus = embedded_cpus()
    make_state_api_fail_fast()
    # A trial that failed or ran past its limit waits this long for its workers' process-group
    # shutdown (Ray Train's default: 30 s) before they are killed; a hung rank never answers. Ray Train
    # reads it in its controller, which inherits the embedded cluster's environment.
    os.environ.setdefault("TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S", "5")
    # address="local": a new cluster of our own, even if another Ray runs on this machine.
    with contextlib.nullcontext() if verbose else without_token_notice():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet)
    return describe_embedded(num_cpus)
