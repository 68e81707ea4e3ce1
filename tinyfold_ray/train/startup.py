"""Every Ray Train worker's heartbeat from the moment its process starts, before the train function runs.

Ray Train 2.60 starts a worker group with calls it waits on without a timeout (the workers' metadata,
their train context, TorchConfig's set-up, starting the train function): a worker frozen there would
hold the trial forever, and until the train function's own Heartbeat (train/heartbeat.py) sends the
worker's actor handle, the watchdog (train/watchdog.py) has nothing to end.

So the job's runtime environment names `register` as its `worker_process_setup_hook` (Ray runs it in
every worker process of the job as the process starts; Ray 2.60 honours the hook only in the job's
runtime environment, not in an actor's). In a process whose environment names a trial's run
(`ProgressChannel.startup_env`, in Ray Train's worker runtime environment) it starts a thread that
waits for the process's actor to exist, then sends the board a start-up note with the actor's handle,
host and pid every second, until the train function's Heartbeat takes over. Elsewhere it does nothing.

Only the standard library (and the phase list, itself torch- and Ray-free) at import: the hook runs in
every worker process of the job.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from tinyfold_ray.train.phases import STARTING

HOOK = "tinyfold_ray.train.startup.register"
JOB_RUNTIME_ENV = {"worker_process_setup_hook": HOOK}
"""What the job's runtime environment (`ray.init(runtime_env=...)`) needs for start-up notes."""

BOARD_VAR = "TINYFOLD_PROGRESS_BOARD"
NAMESPACE_VAR = "TINYFOLD_PROGRESS_NAMESPACE"
RUN_VAR = "TINYFOLD_PROGRESS_RUN"
BEAT_S = 1.0
# The actor exists a moment after its process starts; a frozen process is caught only once its note
# (with its handle) is sent, so the wait is polled finely.
ACTOR_POLL_S = 0.01
# The board is named when it starts; a lookup that comes too early is retried.
LOOKUP_TRIES = 8

_handed_over = threading.Event()


def env(board_name: str, namespace: str, run: str) -> dict[str, str]:
    """The environment variables through which a trial's workers find the board and their run."""
    return {BOARD_VAR: board_name, NAMESPACE_VAR: namespace, RUN_VAR: run}


def register() -> None:
    """The worker-process setup hook: start the start-up notes if this process is a trial's worker."""
    if os.environ.get(RUN_VAR):
        threading.Thread(target=_beat_until_handed_over, name="tinyfold-startup-beat", daemon=True).start()


def hand_over() -> None:
    """The train function's Heartbeat has started in this process: start-up notes end."""
    _handed_over.set()


def process_key(host: str, pid: int) -> str:
    """A worker process's key on the board before it has a rank."""
    return f"{host}:{pid}"


def _beat_until_handed_over() -> None:
    try:
        board = _find_board(os.environ[BOARD_VAR], os.environ[NAMESPACE_VAR])
        actor = _wait_for_actor()
        run, host, pid = os.environ[RUN_VAR], socket.gethostname(), os.getpid()
        note = {"phase": STARTING, "done": None, "steps": None, "host": host, "pid": pid}
        board.put_starting.remote(run, process_key(host, pid), note, actor)
        while not _handed_over.wait(BEAT_S):
            board.put_starting.remote(run, process_key(host, pid), note)
    except Exception:  # noqa: BLE001 - a heartbeat never fails a worker
        return


def _find_board(name: str, namespace: str) -> Any:
    import ray

    for attempt in range(LOOKUP_TRIES):
        try:
            return ray.get_actor(name, namespace=namespace)
        except ValueError:
            if attempt == LOOKUP_TRIES - 1:
                raise
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _wait_for_actor() -> Any:
    """This process's actor handle, once the actor exists (the hook runs before it is created)."""
    import ray

    context = ray.get_runtime_context()
    while context.get_actor_id() is None:
        time.sleep(ACTOR_POLL_S)
    return context.current_actor
