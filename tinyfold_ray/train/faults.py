"""A trial's time limit, and failure reasons a user can act on.

The limit is enforced twice, on public Ray APIs only: each rank checks the deadline between steps and
phases and raises TrialTimeoutError naming its phase, rank and host (train/heartbeat.py); a rank that
cannot (stuck inside a step or a collective) is ended by the driver's watchdog (train/watchdog.py),
which also ends a hung rank long before the limit.

When a trial fails without a watchdog verdict, the cause comes from Ray Train's public
`WorkerGroupError.worker_failures` (each failed rank's exception), never from the text of its message;
the ranks' heartbeat notes on the board add where each rank ran and what it was doing.
"""

from __future__ import annotations

from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import TrialTimeoutError
from tinyfold_ray.flops import train_flops_per_sample
from tinyfold_ray.train.phases import STARTING, order

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


# --- failure reasons ------------------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def _is_oom(error: BaseException) -> bool:
    return any(cls.__name__ in ("OutOfMemoryError", "OutOfMemoryException") for cls in type(error).__mro__)


def _raised_by_ray(error: BaseException) -> bool:
    """Whether Ray itself reports this rank's failure (its health check of the worker failed: the
    worker process is gone) rather than the train function raising it. Ray Train passes the train
    function's own exceptions through unwrapped; its reports about a worker are its own classes."""
    return type(error).__module__.split(".")[0] == "ray"


def rank_reason(
    rank: int, error: BaseException, note: dict[str, Any] | None, alive_node_ids: set[str] | None
) -> str:
    """One rank's failure in words: the cause, then where (rank and host)."""
    note = note or {}
    host = note.get("host", "an unknown host")
    where = f"rank {rank} on {host}"
    if isinstance(error, TrialTimeoutError):
        phase = error.phase or note.get("phase", STARTING)
        return f"timed out after {error.limit_s:.0f} s in {phase} (rank {rank} on {error.host or host})"
    if _is_oom(error):
        return f"out of memory on rank {rank} (device {note.get('device', 'unknown')}, host {host})"
    if _raised_by_ray(error):
        node_id = note.get("node_id")
        if node_id and alive_node_ids is not None and node_id not in alive_node_ids:
            return f"node {host} lost ({where})"
        # Ray's raylet does not keep a dead worker's exit status (its text only lists possible causes),
        # so the reason says no more than it knows.
        return f"worker process died (killed, crashed or OOM-killed: Ray keeps no exit status) ({where})"
    return f"{type(error).__name__}: {_first_line(error)} ({where})"


def _timeout_phase(error: BaseException, note: dict[str, Any] | None) -> str:
    return getattr(error, "phase", None) or (note or {}).get("phase", STARTING)


def describe_failure(
    error: BaseException, notes: dict[int, dict[str, Any]], alive_node_ids: set[str] | None
) -> str | None:
    """A reason built from a Ray Train error's per-rank failures, or None if it carries none.

    A dead process, a lost node or an out-of-memory comes first: the other ranks' errors (a peer's
    connection reset, a time-out while waiting for it) follow from it. Then a time-out: the ranks
    find the deadline passed a few milliseconds apart, and one that ended first breaks its peers'
    next collective. Then any other error.
    """
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return None
    reasons = {
        rank: rank_reason(rank, failures[rank], notes.get(rank), alive_node_ids) for rank in sorted(failures)
    }
    causes = [r for r in reasons.values() if r.startswith(("worker process died", "node ", "out of memory"))]
    timed_out = [rank for rank in failures if isinstance(failures[rank], TrialTimeoutError)]
    if causes:
        consequences = [reasons[r] for r in reasons if reasons[r] not in causes and r not in timed_out]
        return "; ".join(causes + consequences)[:1000]
    if timed_out:
        # The phase of the rank furthest behind: the one holding up the rest.
        laggard = min(timed_out, key=lambda r: (order(_timeout_phase(failures[r], notes.get(r))), r))
        return reasons[laggard]
    return "; ".join(reasons.values())[:1000]
