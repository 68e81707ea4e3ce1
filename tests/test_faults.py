"""Faults injected into real CPU trials (embedded Ray, smallest model): a killed worker, a stopped
(hung) worker, and a study that goes on after a hang. Each ends as a failed row with a reason that
names the rank and host, within a bound, and its workers are released."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pandas as pd
import pytest
import ray
from ray.experimental import internal_kv

from tests.ray_helpers import SMALL_MODEL, embedded_ray
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.train import faults
from tinyfold_ray.train.trial import run_trial

NUM_CPUS = 3
# Far more steps than a test waits for: the trial only ends through the injected fault.
ENDLESS = TrainConfig(batch_size=2, num_steps=1_000_000, warmup_steps=2)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    with embedded_ray(num_cpus=NUM_CPUS):
        yield


class Injector(threading.Thread):
    """Send `sig` to the worker of `rank` once its note says it reached one of `phases`."""

    def __init__(self, rank: int, sig: int, phases=("measured steps",), wait_s: float = 300):
        super().__init__(daemon=True)
        self.rank, self.sig, self.phases, self.wait_s = rank, sig, phases, wait_s
        self.note: dict | None = None
        self.at: float | None = None
        self.done = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline and not self.done.is_set():
            for key in internal_kv._internal_kv_list("tinyfold-", namespace=faults.KV_NAMESPACE):
                raw = internal_kv._internal_kv_get(key, namespace=faults.KV_NAMESPACE)
                if key.endswith(f"/{self.rank}".encode()) and raw:
                    note = json.loads(raw)
                    if note["phase"] in self.phases:
                        os.kill(note["pid"], self.sig)
                        self.note, self.at = note, time.monotonic()
                        return
            time.sleep(0.1)


def _cpus_back(timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= NUM_CPUS - 1e-6:
            return True
        time.sleep(0.2)
    return False


def _gone(pid: int, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_killed_worker_is_a_failed_row_naming_rank_host_and_cause(tmp_path):
    spec = TrialSpec(study="faults", trial_id="kill", num_workers=2, model=SMALL_MODEL, train=ENDLESS)
    injector = Injector(rank=1, sig=signal.SIGKILL)
    injector.start()
    outcome = run_trial(spec, str(tmp_path))
    injector.done.set()
    assert injector.at is not None, outcome.row["error"]
    assert time.monotonic() - injector.at < 30  # the row follows the kill within seconds
    error = outcome.row["error"]
    # The dead worker's reason comes first; a peer's broken connection, if reported, after it.
    assert error.startswith(
        f"worker process died (killed, crashed or OOM-killed: Ray keeps no exit status) (rank 1 on {socket.gethostname()})"
    ), error
    row = pd.read_parquet(tmp_path / "faults").iloc[0]
    assert (row.trial_id, row.status, row.error) == ("kill", "failed", error)
    assert _cpus_back()


def test_a_hung_worker_times_out_and_its_workers_are_released(tmp_path):
    limit = 20.0
    spec = TrialSpec(
        study="faults",
        trial_id="hang",
        num_workers=2,
        model=SMALL_MODEL,
        train=ENDLESS,
        trial_timeout_s=limit,
    )
    # SIGSTOP: the process neither computes nor answers, like a stuck kernel or collective. On a slow
    # machine the limit may come before the worker starts; the trial must end on time either way.
    injector = Injector(rank=1, sig=signal.SIGSTOP, phases=faults.PHASES[1:])
    injector.start()
    start = time.monotonic()
    outcome = run_trial(spec, str(tmp_path))
    injector.done.set()
    took = time.monotonic() - start
    # Within seconds of the limit while the workers run; a start-up still in progress at the limit is
    # ended by the backstop, BACKSTOP_GRACE_S later.
    assert limit <= took < limit + faults.BACKSTOP_GRACE_S + 15, took
    error = outcome.row["error"]
    assert error.startswith(f"timed out after {limit:.0f} s in "), error
    assert error.split(" in ", 1)[1].split(" (")[0] in faults.PHASES
    if injector.note is not None:
        assert _gone(injector.note["pid"])  # the stopped process was killed, not left behind
    assert _cpus_back()
    assert pd.read_parquet(tmp_path / "faults").status.tolist() == ["failed"]
