"""Small shared pieces of the Ray tests, and the one embedded Ray that the session's tests share."""

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from tinyfold_ray.cli import run_main
from tinyfold_ray.config import TrainConfig, tiny_model_config

SMALL_MODEL = tiny_model_config(seq_len=12)
SHORT_TRAINING = TrainConfig(batch_size=2, num_steps=4, warmup_steps=2)

# The model of the end-to-end study files: the smallest that still exercises every module.
TINY_STUDY_MODEL = {
    "c_m": 8,
    "c_z": 8,
    "num_blocks": 1,
    "num_seqs": 3,
    "seq_len": 8,
    "msa_transition_dim": 16,
    "pair_transition_dim": 16,
    "c_opm": 4,
}

# The shared cluster's size: a 2-core machine's embedded cluster (2 cores + the spare for trial
# drivers), on any machine, so that what fits and what is refused does not depend on the machine.
SHARED_CPUS = 3
# This process's environment (less RAY_PROCESS_ENV) before and after each start of the shared Ray.
SHARED_RAY_STARTS: list[tuple[dict[str, str], dict[str, str]]] = []


def start_shared_ray() -> None:
    """The session's embedded Ray, started as a study starts it (ray_session.connect) on first use.

    Each start costs seconds, so tests that run trials share it: conftest.py stops it only when the next
    test does not ask for it (`ray_cluster`), so that no test finds a Ray it did not ask for. The CLIs
    called in-process join it (connect reuses an initialised Ray)."""
    import ray

    from tinyfold_ray.ray_session import connect

    if not ray.is_initialized():
        before = environ_but_ray_process_env()
        connect(num_cpus=SHARED_CPUS)
        SHARED_RAY_STARTS.append((before, environ_but_ray_process_env()))


def stop_shared_ray() -> None:
    """Stop whatever Ray this process has initialised (the shared one, or one a test left behind)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def embedded_ray(num_cpus: int = SHARED_CPUS):
    """For a module's own `ray_cluster` fixture: the session's shared embedded Ray (see above)."""
    assert num_cpus == SHARED_CPUS, f"the shared embedded Ray has {SHARED_CPUS} CPUs"
    start_shared_ray()
    yield


def run_cli(prog: str, main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a CLI's `main` in this process as `python -m prog argv...` runs it: (exit code, stdout,
    stderr). A user error is one line on stderr and exit code 2 (run_main, argparse), as there."""
    capsys.readouterr()
    try:
        code = run_main(prog, lambda: main(argv))
    except SystemExit as e:  # argparse: --help, or a bad flag
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def environ_but_ray_process_env() -> dict[str, str]:
    """This process's environment, less Ray's process-wide settings (ray_session.RAY_PROCESS_ENV), which
    connect() keeps on purpose: a cluster started after the embedded one needs them (test_multinode.py)."""
    from tinyfold_ray.ray_session import RAY_PROCESS_ENV

    return {k: v for k, v in os.environ.items() if k not in RAY_PROCESS_ENV}


def process_gone(pid: int, timeout_s: float = 20) -> bool:
    """Whether process `pid` ends within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


class Injector(threading.Thread):
    """Inject a fault once the worker of `rank` of trial `key` says in its heartbeat that it reached
    `phase` (None: any) and did `steps` steps of it: send it signal `sig`, or call `act` with its note.
    Reads the board the trial reports to, as its watchdog does: `board()` gives it (None until it
    exists; by default this process's, which trials outside a study report to)."""

    def __init__(
        self,
        key: str,
        rank: int,
        sig: int | None = None,
        phase: str | None = "measured steps",
        steps: int = 5,
        board: Callable[[], Any] | None = None,
        act: Callable[[dict], None] | None = None,
    ):
        super().__init__(daemon=True)
        self.key, self.rank, self.phase, self.steps = key, rank, phase, steps
        self.act = act or (lambda note: os.kill(note["pid"], sig))
        self.board = board
        self.note: dict | None = None
        self.at: float | None = None
        """When the signal went (time.monotonic()); `at_wall`: the same, as time.time()."""
        self.at_wall: float | None = None
        self.done = threading.Event()

    def run(self):
        import ray

        from tinyfold_ray.train.heartbeat import process_board

        read = self.board or process_board
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not self.done.is_set():
            board = read()
            note = ray.get(board.trial.remote(self.key)).get(self.rank) if board is not None else None
            if note and self.phase in (None, note["phase"]) and (note["done"] or 0) >= self.steps:
                self.act(note)
                self.note, self.at, self.at_wall = note, time.monotonic(), time.time()
                return
            time.sleep(0.1)
