"""Connect to Ray: join the cluster named by RAY_ADDRESS (as under `ray job submit`), or start an
embedded one on this machine."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from tinyfold_ray.train.startup import JOB_RUNTIME_ENV

# The embedded cluster has one logical CPU more than the machine has cores: trial drivers (Tune's
# function trainables) hold a sliver of a CPU, and a worker group must never wait for that sliver.
# Workers themselves get no more CPUs than there are cores, so a trial that needs more is refused.
SPARE_CPUS = 1

# Since Ray 2.59 every new local cluster turns token authentication on, warns about it at each start
# (the notice starting with these words, advising RAY_AUTH_MODE=disabled "to opt out") and sets
# RAY_AUTH_MODE=token in this process. For the embedded cluster, which only this process starts, uses
# and stops, the token (generated once in ~/.ray/auth_token) costs nothing, and opting out would open
# the cluster's ports to anyone who can reach this machine: the token stays on and the advice is
# dropped. (Setting the mode explicitly would avoid the notice, but only before Ray is imported: Ray
# reads it once per process.) A cluster joined through RAY_ADDRESS keeps its own settings and logs.
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
# A trial that failed or ran past its limit waits this long for its workers' process-group shutdown
# (Ray Train's default: 30 s) before they are killed; a hung rank never answers. Ray Train reads it in
# its controller, from the environment the controller inherits (Train does not pass it on).
EMBEDDED_TRAIN_ENV = {"TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S": "5"}


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


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)


@contextlib.contextmanager
def without_token_notice() -> Iterator[None]:
    """Drop Ray's token-authentication notice (see above) from its console log during the block."""
    handlers = list(logging.getLogger("ray").handlers)
    drop = _DropTokenNotice()
    for handler in handlers:
        handler.addFilter(drop)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(drop)


@contextlib.contextmanager
def environ_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set each of `values` that this process's environment lacks, for the block only: a variable the
    user set keeps its value, and afterwards the environment is as it was."""
    added = {name: value for name, value in values.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# What `ray.init` sets that must outlive its session: the authentication mode of the first cluster this
# process started holds for the process. Taken back, the next cluster the process starts (after
# ray.shutdown) runs without it while this process still authenticates, and its first actors die
# before they run.
RAY_PROCESS_ENV = ("RAY_AUTH_MODE",)


@contextlib.contextmanager
def environ_kept(keep: tuple[str, ...] = ()) -> Iterator[None]:
    """Put this process's environment back as it was before the block, whatever the block set, except
    the variables named in `keep`, which keep what the block set."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        kept = {name: os.environ[name] for name in keep if name in os.environ}
        if os.environ != {**saved, **kept}:
            os.environ.clear()
            os.environ.update({**saved, **kept})


@functools.cache
def _refusing_socket() -> socket.socket:
    """A loopback port bound by this process and never listened on: a connection to it is refused at
    once, and no other process can take the port while this one holds it (for as long as it lives)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def embedded_runtime_env() -> dict[str, Any]:
    """The runtime environment of a cluster this process starts and alone uses: `ray.init(runtime_env=...)`
    hands it to every task and actor of the job, Ray Train's controller included.

    RAY_API_SERVER_ADDRESS: Ray Train's placement-group cleaner asks the state API (served by the
    dashboard) whether the controller lives, with a 10 s timeout, and a trial's end waits for it: 12 s
    per trial when there is no dashboard, or when a stale /tmp/ray/ray_current_cluster (left by any
    earlier `ray start`) points the lookup at a dead cluster. A port that refuses answers at once. The
    cleaner only matters if a controller dies uncleanly, and then an embedded cluster dies with its
    driver anyway. The user's own value is not kept here: it names another cluster's API server, which
    would report this cluster's controllers as unknown, that is dead, and the cleaner would remove the
    placement group of a running trial.
    """
    defaults = {name: value for name, value in EMBEDDED_TRAIN_ENV.items() if name not in os.environ}
    return {
        "env_vars": {
            **defaults,
            "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{_refusing_socket().getsockname()[1]}",
        },
        **JOB_RUNTIME_ENV,  # start-up notes of every trial's workers (train/startup.py)
    }


def connect(*, verbose: bool = False, num_cpus: int | None = None) -> str:
    """ray.init once; return 'Ray cluster at <address>' or 'embedded Ray with N logical CPUs (...)'
    for the log. `verbose` also shows Ray's own warnings at start-up, the token notice included.

    The caller's environment is left as it was: what the cluster's processes need travels in its
    runtime environment, and what importing Ray and `ray.init` set in this process (RAY_CLIENT_MODE,
    RAY_USAGE_STATS_ENABLED, PYTHONBREAKPOINT) is taken back once the cluster runs: its processes have
    their own copies by then, and this one has read them. Only RAY_AUTH_MODE stays (RAY_PROCESS_ENV):
    Ray's authentication holds for the whole process.
    """
    with environ_kept(keep=RAY_PROCESS_ENV):
        return _connect(verbose, num_cpus)


def _connect(verbose: bool, num_cpus: int | None) -> str:
    import ray

    if ray.is_initialized():
        return "the connected Ray cluster"
    quiet = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "WARNING"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=JOB_RUNTIME_ENV, **quiet)
        return f"Ray cluster at {address}"
    if num_cpus is None:
        num_cpus = embedded_cpus()
    # address="local": a new cluster of our own, even if another Ray runs on this machine.
    with contextlib.nullcontext() if verbose else without_token_notice():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=embedded_runtime_env(),
            **quiet,
        )
    return describe_embedded(num_cpus)
