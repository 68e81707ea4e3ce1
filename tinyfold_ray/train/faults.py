"""A trial's time limit, and failure reasons a user can act on.

Workers note the phase they are in (with their rank, host, node and device) in Ray's internal key-value
store, one small write per phase change. When a trial fails, the driver reads these notes to name the
rank, the host and the phase; the cause comes from Ray Train's structured `WorkerGroupError`, whose
`worker_failures` maps each failed rank to its exception, never from the text of its message.

The time limit is enforced inside the Ray Train controller (a worker-group callback): past the deadline
it marks every still-running rank as failed with `TrialTimeoutError`. The controller then handles it
like any worker failure: it stops the workers (killing those that do not answer, a SIGSTOPped one
included), removes their placement group and returns the error to the driver. A worker frozen while
the group still starts (where the controller waits without a timeout) is released by a backstop thread
in the controller's process, BACKSTOP_GRACE_S after the limit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import TrialTimeoutError
from tinyfold_ray.flops import train_flops_per_sample

KV_NAMESPACE = "tinyfold"
# In the order a worker goes through them; a rank that never noted a phase is still starting up.
PHASES = (
    "start-up",
    "build",
    "warm-up",
    "measured steps",
    "time breakdown",
    "replica check",
    "profile",
    "all-reduce probe",
    "teardown",
)

# The default time limit: the worker-group start timeout, a fixed allowance for building the model and
# DDP (more with torch.compile, whose autotuning runs in the warm-up), and each step at a deliberately
# pessimistic speed, so that only a trial that is stuck ever meets it: on CPU about a tenth of what the
# 2-core development machine reaches (a default-model step of batch 4 in 5.5 s, about 47 GFLOP/s), on
# a GPU 5 TFLOP/s, under 1 % of an MI300X's or H100's dense bf16 peak.
BUILD_ALLOWANCE_S = 300.0
COMPILE_ALLOWANCE_S = 900.0
SLOWEST_FLOPS_PER_S = {"cpu": 5e9, "gpu": 5e12}
MIN_STEP_ALLOWANCE_S = 1.0


def default_time_limit_s(spec: TrialSpec, use_gpu: bool = False) -> float:
    steps = spec.train.warmup_steps + spec.train.num_steps
    speed = SLOWEST_FLOPS_PER_S["gpu" if use_gpu else "cpu"]
    per_step = max(MIN_STEP_ALLOWANCE_S, spec.train.batch_size * train_flops_per_sample(spec.model) / speed)
    build = BUILD_ALLOWANCE_S + (COMPILE_ALLOWANCE_S if spec.train.compile != "none" else 0.0)
    return spec.start_timeout_s + build + steps * per_step


def time_limit_s(spec: TrialSpec, use_gpu: bool = False) -> float:
    """The trial's wall-time limit: its `trial_timeout_s`, or one derived from its work."""
    if spec.trial_timeout_s is not None:
        return spec.trial_timeout_s
    return default_time_limit_s(spec, use_gpu)


# --- worker side ----------------------------------------------------------------------------------------


def note_phase(run_name: str, rank: int | str, phase: str, **info: Any) -> None:
    """Record that `rank` entered `phase` (best effort: a trial never fails for want of a note)."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(
            f"{run_name}/{rank}",
            json.dumps({"phase": phase, "since": time.time(), **info}),
            overwrite=True,
            namespace=KV_NAMESPACE,
        )
    except Exception:  # noqa: BLE001 - the note only improves an error message
        pass


# --- driver side ----------------------------------------------------------------------------------------


def read_notes(run_name: str, num_workers: int) -> dict[int, dict[str, Any]]:
    """rank -> its last note; ranks that wrote none are missing."""
    from ray.experimental import internal_kv

    notes = {}
    for rank in range(num_workers):
        try:
            raw = internal_kv._internal_kv_get(f"{run_name}/{rank}", namespace=KV_NAMESPACE)
        except Exception:  # noqa: BLE001 - see note_phase
            raw = None
        if raw:
            notes[rank] = json.loads(raw)
    return notes


def clear_notes(run_name: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(f"{run_name}/", del_by_prefix=True, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001 - a few stale bytes in the GCS harm nobody
        pass


# The controller enforces the limit on its health-check polls, which run only once the workers run. A
# worker frozen while the worker group starts (in Ray's own set-up calls, which wait without a timeout)
# is caught by a backstop this long after the limit.
BACKSTOP_GRACE_S = 30.0
_BACKSTOP_KEY = "backstop"


def make_time_limit_callback(deadline: float, limit_s: float, run_name: str):
    """A Ray Train callback that fails every running rank once `deadline` (epoch s) passes.

    Built on demand so that importing this module needs no Ray. The controller polls the workers every
    health-check interval (1 s), so a running trial ends within about that (plus the workers' stop) of
    its limit. The backstop, for a start-up that never returns, runs in the controller's process too.
    """
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class TimeLimit(WorkerGroupCallback, ControllerCallback):
        def after_worker_group_poll_status(self, worker_group_status) -> None:
            if time.time() < deadline:
                return
            for status in worker_group_status.worker_statuses.values():
                if status.running and status.error is None:
                    status.error = TrialTimeoutError(limit_s)

        def after_controller_start(self, train_run_context) -> None:
            import threading

            self._finished = threading.Event()
            threading.Thread(target=self._backstop, name="tinyfold-time-limit", daemon=True).start()

        def after_controller_finish(self, result) -> None:
            self._finished.set()

        def _backstop(self) -> None:
            if self._finished.wait(max(0.0, deadline + BACKSTOP_GRACE_S - time.time())):
                return
            note_phase(run_name, _BACKSTOP_KEY, "fired")
            _release_this_controllers_workers()

    return TimeLimit()


def _release_this_controllers_workers() -> None:
    """Kill the worker actors and remove the placement group that this controller process holds.

    Ray Train gives callbacks no handle on a worker group that is still starting, so they are found
    among the process's objects: a controller actor runs one trial, and with no retries it has at
    most one worker group. Killing the workers makes the controller's waiting calls fail, and the trial
    ends through Ray Train's own error path.
    """
    import gc

    import ray
    from ray.train.v2._internal.execution.worker_group.worker import Worker
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for obj in gc.get_objects():
        try:
            if isinstance(obj, Worker):
                ray.kill(obj.actor)
            elif isinstance(obj, PlacementGroup):
                remove_placement_group(obj)
        except Exception:  # noqa: BLE001 - already gone: nothing to release
            pass


def backstop_fired(run_name: str) -> bool:
    from ray.experimental import internal_kv

    try:
        return bool(internal_kv._internal_kv_get(f"{run_name}/{_BACKSTOP_KEY}", namespace=KV_NAMESPACE))
    except Exception:  # noqa: BLE001 - see note_phase
        return False


def timeout_reason(limit_s: float, notes: dict[int, dict[str, Any]], num_workers: int) -> str:
    """The reason for a trial stopped by the backstop: the phase of the rank furthest behind."""
    errors = {rank: TrialTimeoutError(limit_s) for rank in range(num_workers)}
    return describe_failure(_Failures(errors), notes, None)


class _Failures(Exception):
    def __init__(self, worker_failures: dict[int, BaseException]):
        super().__init__("time limit")
        self.worker_failures = worker_failures


def _unwrap(error: BaseException) -> BaseException:
    """The worker's own exception, or the actor error a failed health check wraps."""
    inner = getattr(error, "health_check_failure", None)
    return inner if isinstance(inner, BaseException) else error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def _is_oom(error: BaseException) -> bool:
    return any(cls.__name__ in ("OutOfMemoryError", "OutOfMemoryException") for cls in type(error).__mro__)


def rank_reason(
    rank: int, error: BaseException, note: dict[str, Any] | None, alive_node_ids: set[str] | None
) -> str:
    """One rank's failure in words: the cause, then where (rank and host)."""
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckTimeoutError

    note = note or {}
    host = note.get("host", "an unknown host")
    where = f"rank {rank} on {host}"
    error = _unwrap(error)
    if isinstance(error, TrialTimeoutError):
        return f"timed out after {error.limit_s:.0f} s in {note.get('phase', PHASES[0])} ({where})"
    if _is_oom(error):
        return f"out of memory on rank {rank} (device {note.get('device', 'unknown')}, host {host})"
    if isinstance(error, WorkerHealthCheckTimeoutError):
        return f"worker stopped answering its health checks ({where})"
    if isinstance(error, RayActorError):
        node_id = note.get("node_id")
        if node_id and alive_node_ids is not None and node_id not in alive_node_ids:
            return f"node {host} lost ({where})"
        # Ray's raylet does not keep a dead worker's exit status (its text only lists possible causes),
        # so the reason says no more than it knows.
        return f"worker process died (killed, crashed or OOM-killed: Ray keeps no exit status) ({where})"
    return f"{type(error).__name__}: {_first_line(error)} ({where})"


def describe_failure(
    error: BaseException, notes: dict[int, dict[str, Any]], alive_node_ids: set[str] | None
) -> str | None:
    """A reason built from a Ray Train error's per-rank failures, or None if it carries none."""
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return None
    reasons = [
        rank_reason(rank, failures[rank], notes.get(rank), alive_node_ids) for rank in sorted(failures)
    ]
    timed_out = [r for r in reasons if r.startswith("timed out")]
    # A dead process or node comes first: the other ranks' errors (a peer's connection reset) follow from it.
    others = sorted(
        (r for r in reasons if not r.startswith("timed out")),
        key=lambda r: not r.startswith(("worker process died", "node ", "out of memory")),
    )
    if timed_out and not others:
        # Every rank hit the limit: name the phase of the one furthest behind (the one holding the rest).
        laggard = min(failures, key=lambda r: PHASES.index(notes.get(r, {}).get("phase", PHASES[0])))
        return rank_reason(laggard, failures[laggard], notes.get(laggard), alive_node_ids)
    return "; ".join(others)[:1000]
