"""Faults injected into real CPU trials (embedded Ray, smallest model): a killed worker, ranks past their
time limit, and a worker frozen while it starts (a stopped, hung worker: test_faults_study.py). Each ends
as a failed row with a reason that names the rank, host and phase, within a bound, and its workers are
released."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import ray.train

from tests.ray_helpers import SMALL_MODEL, Injector, embedded_ray, process_gone
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.train import watchdog
from tinyfold_ray.train.heartbeat import Heartbeat, process_board
from tinyfold_ray.train.trial import TrialOutcome, controller_env, run_trial

NUM_CPUS = 3
HOST = socket.gethostname()
# Far more steps than a test waits for: the trial only ends through the injected fault.
ENDLESS = TrainConfig(batch_size=2, num_steps=1_000_000, warmup_steps=2)
# Past a 2-worker start-up on a loaded 2-core machine (over 15 s in one CI run).
LIMIT_S = 25
# The trial ids of the time-limit cases: whether some rank can still check the deadline.
ONE_RANK_CHECKS, NO_RANK_CHECKS = "limit-one-checks", "limit-none-checks"
KILLED = "kill"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    with embedded_ray(num_cpus=NUM_CPUS):
        yield


def _cpus_back(timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= NUM_CPUS - 1e-6:
            return True
        time.sleep(0.2)
    return False


def _train_worker_pids() -> set[int]:
    """The Ray Train worker processes on this machine (Ray titles an actor's process with its class)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            pass  # the process ended meanwhile
    return pids


class StartupFreezer(threading.Thread):
    """SIGSTOP the first Ray Train worker process that appears, `after_s` once it has its actor: Ray
    Train is then still starting the worker group (its calls to the workers wait without a timeout)."""

    def __init__(self, after_s: float = 0.3):
        super().__init__(daemon=True)
        self.after_s = after_s
        self.before = _train_worker_pids()
        self.pid: int | None = None

    def run(self):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = _train_worker_pids() - self.before
            if new:
                time.sleep(self.after_s)
                self.pid = min(new)
                os.kill(self.pid, signal.SIGSTOP)
                return
            time.sleep(0.01)


def _trial(trial_id: str, **fields) -> TrialSpec:
    return TrialSpec(study="faults", trial_id=trial_id, num_workers=2, model=SMALL_MODEL, **fields)


def stuck_in_phases(config):
    """Rank 0 sits in the profile phase without a step (a collective that never returns). Rank 1 works
    through the time breakdown, checking the deadline between its steps as train_worker does; in the
    NO_RANK_CHECKS trial it sits in the all-reduce probe instead."""
    rank = ray.train.get_context().get_world_rank()
    with Heartbeat(config["progress"], rank) as beat:
        beat.phase("build")
        if rank == 0 or config["spec"].trial_id == NO_RANK_CHECKS:
            beat.phase("profile" if rank == 0 else "all-reduce probe")
            time.sleep(3600)
        beat.phase("time breakdown")
        for done in itertools.count(1):
            time.sleep(0.05)
            beat.step(done)


@dataclass
class Ended:
    outcome: TrialOutcome
    output: Path
    took_s: float
    """From the trial's start to its row."""
    ended_at: float
    """When its row was there (time.monotonic())."""
    injector: Injector | None = None


def _ranks_running(trial_id: str, num_workers: int = 2) -> None:
    """Wait until every rank of `trial_id` runs its train function (its heartbeat is on the board)."""
    deadline = time.monotonic() + 120
    while len(ray.get(process_board().trial.remote(trial_id))) < num_workers:
        assert time.monotonic() < deadline, f"trial {trial_id}: its ranks never started"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ended(tmp_path_factory) -> dict[str, Ended]:
    """The time-limit trials and the killed worker's, run side by side: each starts once the one before
    it has its ranks in their train function. A start-up is what loads this 2-core machine; then each
    trial waits idle (for its limit, or for the kill), so the three take about as long as the last
    (about 40 s) instead of their sum (about 75 s). Half a logical CPU per worker, so that they fit the
    shared Ray's 3 at once (a worker still runs one thread).

    A fit sets Ray Train's controller settings in this process's environment while it runs, unless the
    user set them (trial._trial_trainer), which assumes one fit at a time: here they are set as a user
    would, for all three."""
    killer = Injector(KILLED, rank=1, sig=signal.SIGKILL)

    def endless(trial_id: str, **fields) -> TrialSpec:
        return _trial(trial_id, train=ENDLESS, cpus_per_worker=0.5, **fields)

    # (the trial, its train function (None: train_worker), what injects its fault)
    trials = [
        (endless(NO_RANK_CHECKS, trial_timeout_s=LIMIT_S), stuck_in_phases, None),
        (endless(ONE_RANK_CHECKS, trial_timeout_s=LIMIT_S), stuck_in_phases, None),
        (endless(KILLED), None, killer),
    ]
    results: dict[str, Ended] = {}

    def run(spec: TrialSpec, train_fn: Callable[[dict], Any] | None, injector: Injector | None) -> None:
        output = tmp_path_factory.mktemp(spec.trial_id)
        start = time.monotonic()
        outcome = run_trial(spec, str(output), train_fn=train_fn)
        now = time.monotonic()
        results[spec.trial_id] = Ended(outcome, output, now - start, now, injector)

    with pytest.MonkeyPatch.context() as env:
        for name, value in controller_env(LIMIT_S).items():
            env.setenv(name, value)
        threads = []
        for spec, train_fn, injector in trials:
            if threads:
                _ranks_running(threads[-1].name)
            if injector is not None:
                injector.start()
            threads.append(threading.Thread(target=run, args=(spec, train_fn, injector), name=spec.trial_id))
            threads[-1].start()
        for thread in threads:
            thread.join(LIMIT_S + watchdog.DEADLINE_GRACE_S + 120)
    killer.done.set()
    assert set(results) == {spec.trial_id for spec, *_ in trials}, "a trial did not end"
    return results


def test_a_killed_worker_is_a_failed_row_naming_rank_host_and_cause(ended):
    trial = ended[KILLED]
    assert trial.injector.at is not None, trial.outcome.row["error"]
    took = trial.ended_at - trial.injector.at
    print(f"killed worker: row {took:.1f} s after the kill")
    assert took < 10  # the row follows the kill within seconds
    error = trial.outcome.row["error"]
    # The dead worker's reason comes first; a peer's broken connection, if reported, after it.
    assert error.startswith(
        f"worker process died (killed, crashed or OOM-killed: Ray keeps no exit status) (rank 1 on {HOST})"
    ), error
    row = pd.read_parquet(trial.output / "faults").iloc[0]
    assert (row.trial_id, row.status, row.error) == (KILLED, "failed", error)
    assert _cpus_back()


@pytest.mark.parametrize(
    "trial_id, reason",
    [
        # Rank 1 finds the deadline passed between its steps: its own TrialTimeoutError names its phase
        # (as any exception a rank raises becomes its trial's failed row).
        (ONE_RANK_CHECKS, "timed out after {limit} s in time breakdown (rank 1 on {host})"),
        # No rank can check: the watchdog ends the trial a grace after the deadline, naming the rank
        # furthest behind.
        (NO_RANK_CHECKS, "timed out after {limit} s in profile (rank 0 on {host})"),
    ],
)
def test_a_trial_past_its_limit_names_the_phase_and_rank_that_ran_out(ended, trial_id, reason):
    trial = ended[trial_id]
    print(f"past the limit ({trial_id}): row after {trial.took_s:.1f} s: {trial.outcome.row['error']}")
    assert trial.outcome.row["error"] == reason.format(limit=LIMIT_S, host=HOST)
    assert LIMIT_S <= trial.took_s < LIMIT_S + watchdog.DEADLINE_GRACE_S + 20
    row = pd.read_parquet(trial.output / "faults").iloc[0]
    assert (row.status, row.error) == ("failed", trial.outcome.row["error"])
    assert pd.isna(row.throughput_samples_per_sec)  # no figure from a trial that did not finish
    assert _cpus_back()


def test_a_worker_frozen_while_the_worker_group_starts_is_ended_at_the_limit(tmp_path):
    # Before its train function runs, a worker sends start-up notes with its actor handle
    # (train/startup.py): without them nothing could end it, and the trial would never end.
    limit = 12
    spec = _trial("frozen-start", train=ENDLESS, trial_timeout_s=limit)
    freezer = StartupFreezer()
    freezer.start()
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(outcome=run_trial(spec, str(tmp_path))), daemon=True
    )
    start = time.monotonic()
    runner.start()
    runner.join(limit + watchdog.DEADLINE_GRACE_S + 20)
    took = time.monotonic() - start
    if "outcome" not in result:
        if freezer.pid is not None:
            os.kill(freezer.pid, signal.SIGKILL)  # so that the trial ends before the next test
        runner.join(60)
        pytest.fail(f"a worker frozen in start-up: still running {took:.0f} s after the trial started")
    error = result["outcome"].row["error"]
    print(f"frozen in start-up: row after {took:.1f} s: {error}")
    assert error == f"timed out after {limit} s in start-up (a worker on {HOST}, pid {freezer.pid})"
    assert took < limit + 5  # no rank runs yet that could end itself: no grace to wait for
    assert process_gone(freezer.pid)
    assert _cpus_back()
