"""Every rank's heartbeat: its phase, steps and whereabouts, on a small board actor (public Ray API).

Each rank keeps what it does (phase, steps done of how many) in attributes that the loop sets between
steps; a background thread sends them to the board when the phase changes and every `every_s` seconds,
without waiting for an answer. The training thread never waits for it, so no step pays for a remote
call or a host synchronisation, and no rank waits for another's note. The thread keeps beating while
its training thread is blocked in a collective; a stopped or dead process sends nothing, which is how
the trial's watchdog (train/watchdog.py) tells a stuck rank from a waiting one.

The board (ProgressBoard: one actor holding no CPU) keeps each rank's last note stamped with its own
clock, so no two hosts' clocks are compared. A study run opens one for all its trials and reads rank
0's note for its heartbeat lines (study/runner.py); a process that runs trials without a study opens
one on its first trial and reuses it (`process_board`).
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tinyfold_ray.errors import TrialTimeoutError
from tinyfold_ray.train import startup
from tinyfold_ray.train.phases import PhaseClock

BEAT_S = 1.0
"""Seconds between a rank's notes while a phase lasts (a phase change is sent at once)."""
STEP_TIMES_KEPT = 64


@dataclass(frozen=True)
class ProgressChannel:
    """Where one trial's ranks send their notes, and its time limit."""

    board: Any
    """The ProgressBoard actor's handle (one per study run, or per process running trials)."""
    key: str
    """The trial's key on the board (its trial_id): the study's heartbeat lines read rank 0's note."""
    every_s: float = BEAT_S
    run: str = ""
    """This fit's run name (one per attempt of the trial): the watchdog reads the ranks under it."""
    deadline: float | None = None
    """Epoch seconds past which a rank raises TrialTimeoutError between steps and phases."""
    limit_s: float | None = None
    """The time limit the deadline comes from, for the reason."""

    def startup_env(self, timeout_s: float = 10.0) -> dict[str, str]:
        """Environment variables for the run's workers, with which their processes send start-up notes
        before the train function runs (train/startup.py); empty if the board does not answer."""
        import ray

        try:
            name, namespace = ray.get(self.board.address.remote(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - without start-up notes only a frozen start-up goes unseen
            return {}
        return startup.env(name, namespace, self.run)


class Heartbeat:
    """One rank's notes; a no-op without a channel. Use as a context manager around the worker's work.

    `send` (for tests) replaces the send to the board; it gets each note as a dict.
    """

    def __init__(
        self,
        channel: ProgressChannel | None,
        rank: int = 0,
        send: Callable[[dict[str, Any]], None] | None = None,
        now: float | None = None,
    ):
        self.channel = channel
        self.rank = rank
        self.clock = PhaseClock(now)
        self._send = send or (_board_sender(channel, rank) if channel is not None else None)
        self._phase: tuple[str, int | None] = (self.clock.current, None)
        self._done = 0
        self.where: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def phase(self, name: str, steps: int | None = None) -> None:
        """Enter phase `name` (of `steps` steps if it counts them): its start time is recorded and the
        note sent at once. Raises TrialTimeoutError, naming the phase that ran out, past the deadline."""
        self._check_deadline()
        self.clock.enter(name)
        self._done = 0  # before the phase, so that a note in between never pairs old steps with it
        self._phase = (name, steps)
        self._wake.set()

    def step(self, done: int) -> None:
        """`done` steps of the current phase are finished. Called between steps: one store, one clock
        read."""
        self._done = done
        self._check_deadline()

    def next_trial(self) -> None:
        """Begin the next trial of a shared worker group: its phases are timed from now."""
        self.clock = PhaseClock(time.time())

    def locate(self, **where: Any) -> None:
        """Where this rank runs (host, node_id, device ...), sent with its notes from now on."""
        self.where.update(where)
        self._wake.set()

    def times(self) -> dict[str, float]:
        return self.clock.times()

    def note(self) -> dict[str, Any]:
        name, steps = self._phase
        return {
            "rank": self.rank,
            "phase": name,
            "done": self._done if steps else None,
            "steps": steps,
            **self.where,
        }

    def _check_deadline(self) -> None:
        channel = self.channel
        if channel is not None and channel.deadline is not None and time.time() >= channel.deadline:
            raise TrialTimeoutError(
                channel.limit_s or 0.0, phase=self._phase[0], rank=self.rank, host=self.where["host"]
            )

    def __enter__(self) -> Heartbeat:
        if self.channel is not None:
            startup.hand_over()
            self._thread = threading.Thread(target=self._run, name="tinyfold-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            # A send takes milliseconds; the daemon thread cannot outlive the worker anyway.
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        assert self.channel is not None
        while True:
            try:
                self._send(self.note())
            except Exception:  # noqa: BLE001 - a heartbeat never fails a trial
                pass
            self._wake.wait(self.channel.every_s)
            self._wake.clear()
            if self._stopping:
                return


def _board_sender(channel: ProgressChannel, rank: int) -> Callable[[dict[str, Any]], None]:
    """send(note) to the channel's board without waiting; the first note also carries this worker's
    actor handle, which the watchdog kills when it ends the trial."""
    first = True

    def send(note: dict[str, Any]) -> None:
        nonlocal first
        actor = _this_actor() if first else None
        channel.board.put.remote(channel.run, channel.key, rank, note, actor)
        first = False

    return send


def _this_actor() -> Any:
    """This worker's actor handle, or None outside an actor."""
    import ray

    try:
        return ray.get_runtime_context().current_actor
    except Exception:  # noqa: BLE001 - not an actor: nothing the watchdog could end
        return None


class ProgressBoard:
    """Every running trial's ranks' last notes, stamped on arrival with the board's own clock.

    For each rank it keeps when it last heard from it (`silent_s`), when its phase or step count last
    moved (`stalled_s`), and the median time of its steps (`step_s`) from the step counts it saw move.
    """

    def __init__(self) -> None:
        self._runs: dict[str, dict[int, dict[str, Any]]] = {}
        self._latest: dict[str, str] = {}  # trial key -> its current run
        # Worker processes of a run that sent start-up notes and no rank's note yet; and those that did.
        self._starting: dict[str, dict[str, dict[str, Any]]] = {}
        self._ranked: dict[str, set[str]] = {}
        self._records: dict[str, dict[int, list[dict[str, Any]]]] = {}  # run -> finished trial -> records
        self._stopped = False  # the study was interrupted: every run's watchdog ends its fit

    def address(self) -> tuple[str, str]:
        """(name, namespace) under which `ray.get_actor` finds this board."""
        import ray

        context = ray.get_runtime_context()
        return context.get_actor_name(), context.namespace

    def put_starting(self, run: str, process: str, note: dict[str, Any], actor: Any = None) -> None:
        """A worker process's start-up note (train/startup.py), until it sends a rank's."""
        if process in self._ranked.get(run, ()):
            return  # a late start-up note from a process whose train function already reports
        state = self._starting.setdefault(run, {}).setdefault(process, {"actor": None})
        state["note"], state["seen"] = note, time.monotonic()
        if actor is not None:
            state["actor"] = actor

    def starting(self, run: str) -> dict[str, dict[str, Any]]:
        """process -> its last start-up note, with `silent_s` and `actor`."""
        now = time.monotonic()
        return {
            process: {**s["note"], "silent_s": now - s["seen"], "actor": s["actor"]}
            for process, s in self._starting.get(run, {}).items()
        }

    def watch(self, run: str) -> tuple[dict[int, dict[str, Any]], dict[str, dict[str, Any]], bool]:
        """`ranks` and `starting` of `run`, and whether the study was stopped (`stop`), in one call."""
        return self.ranks(run), self.starting(run), self._stopped

    def stop(self) -> None:
        """The study was interrupted (Ctrl-C): every running trial's watchdog ends its fit."""
        self._stopped = True

    def put(self, run: str, key: str, rank: int, note: dict[str, Any], actor: Any = None) -> None:
        now = time.monotonic()
        self._latest[key] = run
        if "host" in note and "pid" in note:
            process = startup.process_key(note["host"], note["pid"])
            self._ranked.setdefault(run, set()).add(process)
            self._starting.get(run, {}).pop(process, None)
        ranks = self._runs.setdefault(run, {})
        state = ranks.get(rank)
        if state is None:
            state = ranks[rank] = {"moved": now, "step_times": deque(maxlen=STEP_TIMES_KEPT), "actor": None}
        old = state.get("note")
        if old is not None and old.get("trial") != note.get("trial"):
            state["step_times"].clear()  # a shared worker group's next trial steps at its own pace
        if old is None or (old["phase"], old["done"]) != (note["phase"], note["done"]):
            if old is not None and old["phase"] == note["phase"] and note["done"] and old["done"] is not None:
                # Steps of one phase finished since the last move: each took its share of the interval.
                steps = note["done"] - old["done"]
                state["step_times"].extend([(now - state["moved"]) / steps] * min(steps, STEP_TIMES_KEPT))
            state["moved"] = now
        state["note"], state["seen"] = note, now
        if actor is not None:
            state["actor"] = actor

    def ranks(self, run: str) -> dict[int, dict[str, Any]]:
        """rank -> its last note, with `silent_s`, `stalled_s`, `step_s` (None before a step) and `actor`."""
        now = time.monotonic()
        return {
            rank: {
                **s["note"],
                "silent_s": now - s["seen"],
                "stalled_s": now - s["moved"],
                "step_s": statistics.median(s["step_times"]) if s["step_times"] else None,
                "actor": s["actor"],
            }
            for rank, s in self._runs.get(run, {}).items()
        }

    def trial(self, key: str) -> dict[int, dict[str, Any]]:
        """`ranks` of the trial `key`'s current run."""
        return self.ranks(self._latest.get(key, ""))

    def get(self, key: str) -> dict[str, Any] | None:
        """Rank 0's last note of the trial `key`'s current run."""
        state = self._runs.get(self._latest.get(key, ""), {}).get(0)
        return state["note"] if state else None

    def put_records(self, run: str, index: int, records: list[dict[str, Any]]) -> None:
        """The records of the `index`-th trial of a shared worker group, once it ended."""
        self._records.setdefault(run, {})[index] = records

    def records(self, run: str) -> list[list[dict[str, Any]]]:
        """The records of `run`'s trials that ended, in order."""
        finished = self._records.get(run, {})
        return [finished[i] for i in sorted(finished)]

    def forget(self, run: str) -> None:
        self._records.pop(run, None)
        self._runs.pop(run, None)
        self._starting.pop(run, None)
        self._ranked.pop(run, None)
        self._latest = {k: r for k, r in self._latest.items() if r != run}


def open_board() -> Any:
    """Start a board (no CPU reserved; it dies with the process that started it). It is named, so that
    a worker process can find it before it has its train function's arguments (train/startup.py). It
    runs on this process's node, as Ray Train's controller does: a board on a worker's node would die
    with that node, and with it every rank's note that names the node lost."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    board = ray.remote(num_cpus=0)(ProgressBoard)
    return board.options(name=f"tinyfold-board-{uuid.uuid4().hex}", scheduling_strategy=here).remote()


# One board per Ray connection, its handle kept for the process's life (trials of the connection reuse it).
_process_boards: dict[tuple[str, str], Any] = {}
_process_boards_lock = threading.Lock()


def process_board() -> Any:
    """This process's board, started on first use: every trial this process runs outside a study shares
    it, so no trial pays for starting an actor. One per Ray connection (its job on its cluster): a board
    dies with the connection that started it."""
    import ray

    context = ray.get_runtime_context()
    connection = (context.get_node_id(), context.get_job_id())
    with _process_boards_lock:  # two threads' first trials (or a test's reader) must share one
        if connection not in _process_boards:
            _process_boards[connection] = open_board()
        return _process_boards[connection]


def close_board(board: Any) -> None:
    import ray

    ray.kill(board)


def read_progress(board: Any, key: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """Rank 0's last note of trial `key`, or None (none yet, or the board did not answer)."""
    import ray

    try:
        return ray.get(board.get.remote(key), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a missed heartbeat line is no error
        return None
