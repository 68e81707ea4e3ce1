"""Run one trial on Ray Train and write its Parquet: a trial row and its per-(rank, step) rows.

Failure is data: an infeasible request, a worker that raises, dies or hangs, a lost node, an
out-of-memory, a non-finite loss or a trial past its time limit ends as a row with status 'failed' and
a reason naming the rank, host and cause (train/faults.py), never as a crash of the caller.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StorageError, StudyInterrupted
from tinyfold_ray.flops import utilization
from tinyfold_ray.ray_session import environ_defaults
from tinyfold_ray.results.safe_write import store_trial
from tinyfold_ray.results.schema import PHASE_COLUMNS, PROFILES_DIR, config_hash, config_values
from tinyfold_ray.results.storage import join
from tinyfold_ray.train import faults
from tinyfold_ray.train.environment import forwarded_env, recorded_env
from tinyfold_ray.train.heartbeat import ProgressChannel, process_board
from tinyfold_ray.train.phases import TIMED_KEYS
from tinyfold_ray.train.resources import alive_nodes, check_placement
from tinyfold_ray.train.timing import loss_ends, step_stats
from tinyfold_ray.train.watchdog import INTERRUPTED, Watchdog

# Read by the Train controller, which Ray Train gives these variables from the environment of the
# process that calls fit(); the trial's trainer sets them for its fit only, unless the user set them.
TRAIN_ENV = {
    # The controller notices that the workers finished on its next poll, so the interval is paid once at
    # a trial's end; each poll also takes a worker's GIL and the controller's CPU while the steps run.
    # Weak-scaling efficiency, 2 vs 1 CPU workers on 2 cores (smoke model, 40 steps, medians of 4):
    # 0.81 at 0.2 s, 0.85 at 0.5 s, 0.91 at 2 s; at 1.0 s the benchmark measured 0.96, and each trial
    # pays about 1 s at its end.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.0",
    # The preemption watcher (one more actor process per trial) serves retries, and trials never retry.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# The worker group's start timeout, which Ray Train's controller reads the same way (a trial's own).
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# Ray Train runs the train function in a thread of the worker actor. glibc gives each thread its own
# malloc arena, whose large blocks go back to the OS and fault in again every step: a CPU step of the
# default model took 5.91 s in a thread against 5.49 s on a main thread; with one arena 5.11 s against
# 5.09 s. GPU runs allocate little on the host and do not notice.
WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}
# How often a shared worker group's driver looks for trials that ended, to write their rows.
RECORDS_POLL_S = 1.0
# A measured step's parts, per rank and step (train/breakdown.py split_steps).
STEP_PARTS = ("compute_time_s", "comm_exposed_s", "optimizer_time_s")
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)):\s*(.+)$")


@dataclass
class TrialOutcome:
    row: dict[str, Any]
    step_rows: list[dict[str, Any]]
    path: str | None = None
    fallback: str | None = None
    """Where the rows went instead when the output could not be written (see results/safe_write.py)."""
    phases_s: dict[str, float] = field(default_factory=dict)
    """Where the trial's wall time went (schema.PHASE_COLUMNS; empty when the trial failed)."""
    lost: str | None = None
    """Why no row could be written anywhere (neither the output nor the fallback; run_trials)."""

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def run_trial(
    spec: TrialSpec,
    output: str | None,
    *,
    git_commit: str | None = None,
    reserved_cpus: float = 0.0,
    fallback_root: str | None = None,
    train_fn: Callable[[dict], Any] | None = None,
    progress: ProgressChannel | None = None,
) -> TrialOutcome:
    """Fit one TorchTrainer for `spec`; write its Parquet under `output` (skipped when None).

    `reserved_cpus`: CPUs the caller itself holds on the cluster (a Tune trial's own reservation).
    `fallback_root`: local directory for the rows if `output` cannot be written (default: ~/tinyfold-fallback).
    `train_fn`: for tests only, replaces each worker's function (tests/test_trial.py slows a rank).
    `progress`: where rank 0 notes its phase and step for the study driver's heartbeat (None: nowhere).
    A fault after training (building the row, rows the writer refuses) still ends as a failed row naming
    the phase and cause. Raises StorageError (one line) only when neither `output` nor the fallback can
    be written: then no row exists anywhere, and the caller reports the trial as lost.
    """
    (outcome,) = run_trials(
        [spec],
        output,
        git_commit=git_commit,
        reserved_cpus=reserved_cpus,
        fallback_root=fallback_root,
        train_fn=train_fn,
        progress=progress,
    )
    if outcome.lost is not None:
        raise StorageError(outcome.lost)
    return outcome


def run_trials(
    specs: list[TrialSpec],
    output: str | None,
    *,
    git_commit: str | None = None,
    reserved_cpus: float = 0.0,
    fallback_root: str | None = None,
    train_fn: Callable[[dict], Any] | None = None,
    progress: ProgressChannel | None = None,
) -> list[TrialOutcome]:
    """Run `specs` one after another in one worker group (one fit): one trial, or the trials of a shared
    worker group (study/groups.py), which need the same worker processes. Each trial's outcome as
    run_trial's, in order, with `lost` set instead of raising StorageError.

    The first trial's wall time includes the group's start-up; each later one runs from the end of the
    one before it, and the last one's includes the group's teardown, so the group's wall time is the sum
    of its trials'. When a trial fails the group ends: the trials before it keep their rows, and those
    after it get failed rows saying they did not run. When the study is stopped (its board's `stop`,
    on Ctrl-C), the fit ends at once and this raises StudyInterrupted: the running trial and those after
    it get no row, so that the study's next run runs them; those before it keep theirs.
    """
    t0 = time.time()
    use_gpu, error = check_placement(specs[0], alive_nodes(), reserved_cpus)
    outcomes: list[TrialOutcome] = []
    ends: list[float] = []

    def outcome(spec: TrialSpec, records, error: str | None, begin: float, end: float) -> TrialOutcome:
        started, ended = (datetime.fromtimestamp(t, timezone.utc) for t in (begin, end))
        return build_outcome(spec, records, error, use_gpu, started, ended, end - begin, git_commit)

    def finish(records: list[dict[str, Any]] | None, reason: str | None, end: float | None) -> None:
        """The next trial's row, from where the one before it ended until `end` (None: it did not run),
        written at once: a shared group's trial is kept even if its driver dies before the group ends."""
        spec, begin = specs[len(outcomes)], ends[-1] if ends else t0
        end = begin if end is None else end
        try:
            result = outcome(spec, records, reason, begin, end)
        except Exception as e:  # noqa: BLE001 - a fault in the row (a missing figure, a bug) is recorded too
            result = outcome(spec, None, f"building the trial row: {failure_reason(e)}", begin, end)
        if output is not None:
            try:
                result = _store(result, output, fallback_root)
            except StorageError as e:
                result.lost = str(e)
            except Exception as e:  # noqa: BLE001 - rows the writer refuses: keep a failed row in their place
                failed = outcome(spec, None, f"storing the trial row: {failure_reason(e)}", begin, end)
                try:
                    result = _store(failed, output, fallback_root)
                except StorageError as lost:
                    failed.lost = str(lost)
                    result = failed
        outcomes.append(result)
        ends.append(end)

    finished: list[list[dict[str, Any]]] = []
    if error is None:
        limit = sum(faults.time_limit_s(s, use_gpu) for s in specs)
        profile_dirs = [
            join(output, s.study, PROFILES_DIR, s.trial_id) if s.profile and output else None for s in specs
        ]
        try:
            finished, error = _fit(
                specs,
                use_gpu,
                t0 + limit,
                limit,
                profile_dirs,
                train_fn,
                progress,
                # A shared group's trial that ended while the group goes on: it ended when gathered.
                on_ended=lambda records: finish(records, None, records[0]["gathered_at"]),
            )
        except StudyInterrupted:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of a trial is recorded, never raised
            error = failure_reason(e)
    t_end = time.time()
    for index in range(len(outcomes), len(specs)):
        if index < len(finished):
            last = index == len(specs) - 1
            finish(finished[index], None, t_end if last else finished[index][0].get("gathered_at", t_end))
        elif index == len(finished):
            finish(None, error, t_end)
        else:
            finish(
                None, f"not run: trial {specs[len(finished)].trial_id} of its worker group failed first", None
            )
    return outcomes


def _store(outcome: TrialOutcome, output: str, fallback_root: str | None) -> TrialOutcome:
    """`outcome` once its rows are written (results/safe_write.py), with where they went."""
    row = outcome.row
    outcome.path, outcome.fallback = store_trial(
        output, row["study"], row, outcome.step_rows, fallback_root=fallback_root
    )
    return outcome


def _run_name(spec: TrialSpec) -> str:
    """Unique per fit: it also keys the ranks' notes on the heartbeat board (train/heartbeat.py)."""
    return f"tinyfold-{spec.study}-{spec.trial_id}-{uuid.uuid4().hex[:8]}"


def _fit(
    specs: list[TrialSpec],
    use_gpu: bool,
    deadline: float,
    limit: float,
    profile_dirs: list[str | None],
    train_fn: Callable[[dict], Any] | None = None,
    progress: ProgressChannel | None = None,
    on_ended: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[list[list[dict[str, Any]]], str | None]:
    """(the records of each trial that finished, by rank, each with `node_gpus`: its node's GPU count as
    Ray knows it; why the next one failed, or None).

    The ranks send their heartbeats to `progress`'s board (a study's), else to this process's own; the
    watchdog reads them while the fit runs and ends a hung trial, or one its ranks cannot end at the
    deadline (train/watchdog.py). `on_ended` gets, in order and while the fit runs, the records of each
    trial of a shared group that ended before the group's last (rank 0 puts them on the board)."""
    spec = specs[0]
    name = _run_name(spec)
    channel = (
        replace(progress, run=name, deadline=deadline, limit_s=limit)
        if progress is not None
        else ProgressChannel(process_board(), spec.trial_id, run=name, deadline=deadline, limit_s=limit)
    )
    delivered, stop = [], threading.Event()
    # The ranks' nodes stay those of the fit: one lookup serves every trial of the group.
    node_gpus = functools.cache(_node_gpus)

    def deliver() -> None:
        for records in _board_records(channel)[len(delivered) :]:
            delivered.append(records)
            if on_ended is not None:
                on_ended(_by_rank(records, node_gpus()))

    def poll() -> None:
        while not stop.wait(RECORDS_POLL_S):
            deliver()

    poller = threading.Thread(target=poll, name="tinyfold-records", daemon=True)
    slack_s = max(s.stall_slack_s for s in specs)
    with Watchdog(channel, spec.num_workers, stall_slack_s=slack_s) as watchdog:
        if len(specs) > 1:
            poller.start()
        try:
            trainer = make_trainer(
                spec,
                use_gpu,
                train_fn,
                name=name,
                profile_dir=profile_dirs[0],
                progress=channel,
                more=list(zip(specs[1:], profile_dirs[1:])),
            )
            finished = trainer.fit().return_value
            error = None
        except Exception as e:  # noqa: BLE001 - any failure of a trial is recorded, never raised
            finished, error = None, _fit_failure(e, watchdog)
        finally:
            stop.set()
            if poller.is_alive():
                poller.join()
        if finished is None and len(specs) > 1:
            deliver()  # what rank 0 put on the board since the last poll
            finished = delivered
        if error is not None and watchdog.verdict == INTERRUPTED:
            # The trials that ended before keep their rows (on_ended wrote them); this one gets none.
            raise StudyInterrupted(INTERRUPTED)
    return [_by_rank(records, node_gpus()) for records in finished or []], error


def _node_gpus() -> dict[str, int]:
    """Each node's GPU count as Ray knows it."""
    return {n["NodeID"]: int(n.get("Resources", {}).get("GPU", 0)) for n in _ray_nodes()}


def _by_rank(records: list[dict[str, Any]], gpus: dict[str, int]) -> list[dict[str, Any]]:
    """`records` by rank, each with `node_gpus`: its node's GPU count (`gpus`, from _node_gpus)."""
    return sorted(
        ({**r, "node_gpus": gpus.get(r["node_id"], 0)} for r in records), key=lambda r: r["world_rank"]
    )


def _fit_failure(error: Exception, watchdog: Watchdog) -> str:
    """Why a fit failed, in one line: the watchdog's verdict, else each failed rank's exception with
    where the rank ran and what it was doing (its notes), else the innermost error's line."""
    if watchdog.verdict is not None:
        return watchdog.verdict
    alive = {n["NodeID"] for n in _ray_nodes() if n.get("Alive")}
    return faults.describe_failure(error, watchdog.notes(), alive) or failure_reason(error)


def _board_records(channel: ProgressChannel) -> list[list[dict[str, Any]]]:
    """The records that a shared worker group's rank 0 put on the board as its trials ended."""
    import ray

    try:
        return ray.get(channel.board.records.remote(channel.run), timeout=10.0)
    except Exception:  # noqa: BLE001 - the board is gone: those trials run again on resume
        return []


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    return ray.nodes()


def make_trainer(
    spec: TrialSpec,
    use_gpu: bool,
    train_fn: Callable[[dict], Any] | None = None,
    *,
    name: str | None = None,
    profile_dir: str | None = None,
    progress: ProgressChannel | None = None,
    more: Sequence[tuple[TrialSpec, str | None]] = (),
):
    """The TorchTrainer of a trial; `train_fn` replaces the training (the benchmark times an empty one).

    `profile_dir`: where each rank writes its torch.profiler trace (None: no profile). `progress`: where
    every rank sends its heartbeat notes, with the trial's deadline that each rank checks between steps
    and phases (None: no notes and no deadline; only the start and collective timeouts below bound it).
    `more`: the trials (with their profile_dir) that run after `spec` in the same workers (a shared
    worker group); they need what `spec` needs of the workers (study/groups.py).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    from tinyfold_ray.train.worker import train_worker

    run_name = name or _run_name(spec)
    limit = sum(faults.time_limit_s(s, use_gpu) for s in [spec, *(s for s, _ in more)])
    # The worker group's start and the process group's collectives (TorchConfig.timeout_s, 1,800 s by
    # default) wait no longer than the trial may run.
    start_timeout_s = min(spec.start_timeout_s, limit)

    requested = requested_device(spec, use_gpu)
    comm = spec.comm_backend or ("nccl" if use_gpu else "gloo")
    return _trial_trainer()(
        train_fn or train_worker,
        train_loop_config={
            "spec": spec,
            "backend": requested,
            "use_gpu": use_gpu,
            "profile_dir": profile_dir,
            "progress": progress,
            "more": list(more),
        },
        torch_config=TorchConfig(backend=comm, timeout_s=max(1, math.ceil(limit))),
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": spec.cpus_per_worker, **spec.resources_per_worker},
            placement_strategy=spec.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=os.path.join(tempfile.gettempdir(), run_name),
            # No retries: a failed trial is a result, and a retry would time something else.
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=0),
            # The workers' start-up notes (train/startup.py) name the board and this run.
            worker_runtime_env={
                "env_vars": {
                    **worker_env(spec),
                    **WORKER_ENV,
                    **compile_cache_env(spec),
                    **(progress.startup_env() if progress is not None else {}),
                }
            },
        ),
        controller_env=controller_env(start_timeout_s),
    )


def controller_env(start_timeout_s: float) -> dict[str, str]:
    """The settings of a trial's Train controller: TRAIN_ENV and the worker group's start timeout."""
    return {**TRAIN_ENV, START_TIMEOUT_ENV: str(start_timeout_s)}


@functools.cache
def _trial_trainer() -> type:
    """TorchTrainer, with a fit() that leaves no trace in this process or its home directory.

    Ray Train reads its controller's settings (TRAIN_ENV, the worker group's start timeout) only from
    the environment of the process that calls fit(), when fit() starts the controller, and offers no
    other route (its RunConfig and ScalingConfig have no such fields). So fit() sets the ones the user
    did not set, and takes them back when it returns: nothing else in a trial's process reads them
    meanwhile, and no two fits run at once in one process. Train's storage (a marker file per fit,
    since trials keep no checkpoints) is a folder of the temporary directory, removed after the fit.
    """
    from ray.train.torch import TorchTrainer

    class TrialTrainer(TorchTrainer):
        def __init__(self, *args, controller_env: dict[str, str], **kwargs):
            super().__init__(*args, **kwargs)
            self.controller_env = controller_env

        def fit(self):
            try:
                with environ_defaults(self.controller_env):
                    return super().fit()
            finally:
                shutil.rmtree(self.run_config.storage_path, ignore_errors=True)

    return TrialTrainer


def requested_device(spec: TrialSpec, use_gpu: bool) -> str:
    """The device a trial's workers ask for: `auto` stays auto only where Ray gives them a GPU."""
    return spec.device if spec.device != "auto" else ("auto" if use_gpu else "cpu")


def worker_env(spec: TrialSpec) -> dict[str, str]:
    """The collective-library variables of this driver, then the study's `env:` over them: what every
    worker of the trial gets on top of its node's own environment (and what the trial records)."""
    return {**forwarded_env(os.environ), **spec.env}


def compile_cache_env(spec: TrialSpec) -> dict[str, str]:
    """torch.compile's cache folder for the workers, when the study names one. Ray expands `${HOME}`
    on each worker's node, so `~` means that node's home. Not recorded with the trial's environment:
    where the cache lives changes how long a compile takes, never what a step measures."""
    if spec.compile_cache is None:
        return {}
    path = spec.compile_cache
    if path == "~" or path.startswith("~/"):
        path = "${HOME}" + path[1:]
    return {"TORCHINDUCTOR_CACHE_DIR": path}


def failure_reason(exc: BaseException) -> str:
    """One line: the innermost 'SomeError: message' found in the exception's text."""
    text = str(exc)
    for line in reversed(text.splitlines()):
        match = _ERROR_LINE.match(line.strip())
        if match:
            return f"{match.group(1)}: {match.group(2)}"[:500]
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _settings(spec: TrialSpec, use_gpu: bool) -> dict[str, Any]:
    """The trial's names and its whole resolved configuration (schema.CONFIG_COLUMNS)."""
    config = config_values(spec)
    fused = spec.train.fused_optimizer
    return {
        "study": spec.study,
        "trial_id": spec.trial_id,
        "repeat": spec.repeat,
        "num_gpus": spec.num_workers if use_gpu else 0,
        **config,
        "config_hash": config_hash(config),
        # What the trial uses (rank 0's report replaces it once workers ran); the hash keeps the request.
        "fused_optimizer": use_gpu if fused is None else fused,
    }


def build_outcome(
    spec: TrialSpec,
    records: list[dict[str, Any]] | None,
    error: str | None,
    use_gpu: bool,
    started: datetime,
    ended: datetime,
    wall_time_s: float,
    git_commit: str | None,
) -> TrialOutcome:
    row: dict[str, Any] = {
        **_settings(spec, use_gpu),
        "status": "failed" if error else "ok",
        "error": error,
        "backend": spec.device if spec.device != "auto" else None,
        "start_time": started,
        "end_time": ended,
        "wall_time_s": wall_time_s,
        "git_commit": git_commit,
        "env_vars": recorded_env(worker_env(spec)),
        "run_order": spec.run_order,
    }
    if error or not records:
        return TrialOutcome(row=row, step_rows=[])

    if spec.train.cuda_graph:
        # One replayed graph has no marks between backward and the optimiser: its parts are unknown.
        records = [{**r, **dict.fromkeys(STEP_PARTS, [None] * len(r["step_times_s"]))} for r in records]
    first = records[0]
    per_node = Counter(r["node_id"] for r in records)
    stats = step_stats([r["step_times_s"] for r in records], spec.global_batch)
    slowest_total = sum(max(times) for times in zip(*(r["step_times_s"] for r in records)))
    memories = [r["peak_memory_bytes"] for r in records if r["peak_memory_bytes"] is not None]
    # gloo collectives use no NCCL/RCCL, whatever library this torch was built with.
    comm_library = None if first["comm_backend"] == "gloo" else first["comm_library_version"]
    row.update(
        {
            "num_nodes": len(per_node),
            "workers_per_node": max(per_node.values()),
            "backend": first["backend"],
            "comm_backend": first["comm_backend"],
            "device_name": first["device_name"],
            "fused_optimizer": first["fused_optimizer"],
            "num_params": first["num_params"],
            **stats,
            **loss_ends([r["losses"] for r in records]),
            "peak_memory_bytes": max(memories) if memories else None,
            # The probe returns the same figures on every rank (each size's slowest rank).
            **{k: first[k] for k in ("allreduce_time_s", "allreduce_latency_s", "allreduce_s_per_byte")},
            **breakdown_stats(records),
            **rank_balance(records),
            "replica_divergence": replica_divergence([r["common_batch_loss"] for r in records]),
            **utilization(
                spec.model,
                stats["throughput_samples_per_sec"],
                first["device_name"],
                spec.train.amp,
                spec.num_workers,
            ),
            "profile_path": first["profile_path"] and posixpath.dirname(first["profile_path"]),
            "overhead_s": wall_time_s - slowest_total,
            **phase_times(records, started.timestamp(), wall_time_s, slowest_total),
            "hostnames": ",".join(sorted({r["hostname"] for r in records})),
            **{
                k: first[k]
                for k in ("torch_version", "ray_version", "python_version", "cuda_version", "hip_version")
            },
            "comm_library_version": comm_library,
            "node_gpus": max(r["node_gpus"] for r in records) if use_gpu else 0,
        }
    )
    row["compile_time_s"] = compile_time_s(spec, row)
    step_rows = [
        {
            "study": spec.study,
            "trial_id": spec.trial_id,
            "repeat": spec.repeat,
            "world_rank": r["world_rank"],
            "local_rank": r["local_rank"],
            "node_id": r["node_id"],
            "hostname": r["hostname"],
            "device_name": r["device_name"],
            "step": i,
            "step_time_s": t,
            "loss": loss,
            "peak_memory_bytes": r["peak_memory_bytes"],
            "compute_time_s": compute,
            "comm_exposed_s": comm,
            "optimizer_time_s": optimizer,
            "compute_reference_s": r["compute_reference_s"],
        }
        for r in records
        for i, (t, loss, compute, comm, optimizer) in enumerate(
            zip(
                r["step_times_s"],
                r["losses"],
                r["compute_time_s"],
                r["comm_exposed_s"],
                r["optimizer_time_s"],
            )
        )
    ]
    phases = {k: row[k] for k in PHASE_COLUMNS if row[k] is not None}
    return TrialOutcome(row=row, step_rows=step_rows, phases_s=phases)


def compile_time_s(spec: TrialSpec, row: dict[str, Any]) -> float | None:
    """The warm-up's time beyond its steps at the measured median step: what torch.compile spent
    (tracing, compiling or loading its cache, autotuning, recording CUDA graphs). Null without
    compile, or when the phases are unknown; never below 0 (a warm cache leaves noise)."""
    if spec.train.compile == "none" or row.get("warmup_s") is None:
        return None
    return max(0.0, row["warmup_s"] - spec.train.warmup_steps * row["step_time_median_s"])


def breakdown_stats(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Medians of the step breakdown over every (rank, step) (null where the parts are unknown), the
    rank skew and the loss spread."""

    def median_of(key: str) -> float | None:
        values = [v for r in records for v in r[key]]
        return None if None in values else float(np.median(values))

    times = np.asarray([r["step_times_s"] for r in records])  # [ranks, steps]
    mean_losses = np.asarray([np.mean(r["losses"]) for r in records])
    return {
        "compute_time_median_s": median_of("compute_time_s"),
        "comm_exposed_median_s": median_of("comm_exposed_s"),
        "optimizer_time_median_s": median_of("optimizer_time_s"),
        "rank_skew_median_s": float(np.median(times.max(axis=0) - times.min(axis=0))),
        "loss_rank_spread": float(np.ptp(mean_losses) / np.median(mean_losses)),
    }


def rank_balance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """load_imbalance (slowest rank's compute reference over the median of the other ranks'),
    slowest_rank and its host. Under DDP every rank waits for the slowest inside backward, so their step
    times agree and only each rank's own compute-only reference shows which one holds the others up.
    The slowest is left out of the median so that with 2 ranks a rank 3x slower reads 3.0, not 1.5.
    Null with one worker."""
    references = [r["compute_reference_s"] for r in records]
    if len(records) < 2 or None in references:
        return {"load_imbalance": None, "slowest_rank": None, "slowest_rank_host": None}
    slowest_index = int(np.argmax(references))
    slowest = records[slowest_index]
    others = references[:slowest_index] + references[slowest_index + 1 :]
    return {
        "load_imbalance": float(references[slowest_index] / np.median(others)),
        "slowest_rank": slowest["world_rank"],
        "slowest_rank_host": slowest["hostname"],
    }


def replica_divergence(common_batch_losses: list[float | None]) -> float | None:
    """(max - min) / |median| of every rank's loss on the common batch: 0 when the replicas hold the
    same parameters, as DDP keeps them. Null with one worker."""
    if len(common_batch_losses) < 2 or None in common_batch_losses:
        return None
    losses = np.asarray(common_batch_losses, dtype=float)
    return float(np.ptp(losses) / abs(np.median(losses)))


def phase_times(
    records: list[dict[str, Any]], start: float, wall_time_s: float, steps_s: float
) -> dict[str, float | None]:
    """Where a trial's wall time went: schema.PHASE_COLUMNS, the parts of after_measure_s, and
    overhead_other_s (the measured phase less `steps_s`, the sum of the measured steps' times).

    A phase begins when its slowest rank begins it (train/worker.py notes when each rank begins each
    phase), so consecutive phases add up to `wall_time_s`: startup runs from `start` (the driver's epoch
    seconds) to the last rank entering the train function, teardown from the last rank beginning its
    teardown to `start + wall_time_s`. The workers' times come from each host's own clock: skew between
    the driver's host and theirs moves time between startup and teardown, never out of their sum.
    """
    if any("times" not in r for r in records):
        # A train function other than train_worker (run_trial's train_fn) notes no phases: null.
        return dict.fromkeys((*PHASE_COLUMNS, "reference_s", "probe_s", "overhead_other_s"))
    began = {phase: max(r["times"][phase] for r in records) for phase in TIMED_KEYS}
    edges = [start, *(began[p] for p in ("build", "warmup", "measured", "reference", "teardown"))]
    parts = dict(zip(PHASE_COLUMNS, np.diff([*edges, start + wall_time_s]).tolist()))
    return {
        **parts,
        "reference_s": began["profile"] - began["reference"],
        "probe_s": began["teardown"] - began["probe"],
        # The loop's time between step timings (the next batch, the loss checks), small; with several
        # ranks a little below that (even below 0), as `steps_s` adds each step's slowest rank.
        "overhead_other_s": parts["measured_s"] - steps_s,
    }
