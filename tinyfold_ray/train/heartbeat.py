"""A running trial's progress, for the study's heartbeat lines: rank 0 writes it, the study driver reads it.

Rank 0 keeps what it does (phase, steps done of how many) in two attributes that the loop sets between
steps; a background thread sends them to the study run's progress board (a small named actor, public
Ray API, no CPU) when the phase changes and every `every_s` seconds, without waiting for an answer. The
training thread never waits for it, so no step pays for a remote call or a host synchronisation, and the
other ranks (which would wait for rank 0 in their next all-reduce) never notice. The driver reads the
board on the same interval (study/runner.py) and removes it when the study ends.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProgressChannel:
    """Where one trial's rank 0 reports its progress, and how often."""

    board: str
    """Name of the study run's ProgressBoard actor (one per driver run: a killed driver's is gone)."""
    key: str
    """This trial's note on the board."""
    every_s: float
    """Seconds between writes while a phase lasts (a phase change is written at once)."""


class Heartbeat:
    """Rank 0's progress note; a no-op without a channel (other ranks, or no study driver listening).

    Use as a context manager around the worker's work: the thread starts on entry and stops on exit.
    `put` (for tests) replaces the send to the progress board.
    """

    def __init__(self, channel: ProgressChannel | None, put: Callable[[str, str], None] | None = None):
        self.channel = channel
        self._put = put or (_board_sender(channel.board) if channel is not None else None)
        self._phase: tuple[str, int | None] = ("start-up", None)
        self._done = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def phase(self, name: str, steps: int | None = None) -> None:
        """Enter phase `name`, of `steps` steps if it counts them; written at once."""
        self._done = 0  # before the phase, so that a write in between never pairs old steps with it
        self._phase = (name, steps)
        self._wake.set()

    def step(self, done: int) -> None:
        """`done` steps of the current phase are finished. Called between steps: one attribute store."""
        self._done = done

    def note(self) -> dict[str, Any]:
        name, steps = self._phase
        return {"phase": name, "done": self._done if steps else None, "steps": steps}

    def __enter__(self) -> Heartbeat:
        if self.channel is not None:
            self._thread = threading.Thread(target=self._run, name="tinyfold-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            # A write in flight takes milliseconds; the daemon thread cannot outlive the worker anyway.
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        assert self.channel is not None
        while True:
            self._wake.wait(self.channel.every_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._put(self.channel.key, json.dumps(self.note()))
            except Exception:  # noqa: BLE001 - a heartbeat never fails a trial
                pass


class ProgressBoard:
    """The notes of a study run's running trials, by key: rank 0 of each trial writes, the driver reads."""

    def __init__(self) -> None:
        self._notes: dict[str, str] = {}

    def put(self, key: str, value: str) -> None:
        self._notes[key] = value

    def get(self, key: str) -> str | None:
        return self._notes.get(key)


def open_board(name: str) -> Any:
    """Start the study run's board (no CPU reserved; it dies with the driver that started it)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).options(name=name).remote()


def close_board(board: Any) -> None:
    import ray

    ray.kill(board)


def _board_sender(name: str) -> Callable[[str, str], None]:
    """put(key, value) to the named board, without waiting for it (the actor is looked up once)."""
    board = None

    def put(key: str, value: str) -> None:
        nonlocal board
        if board is None:
            import ray

            board = ray.get_actor(name)
        board.put.remote(key, value)

    return put


def read_progress(board: Any, key: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The last note written to `key` on `board`, or None (none yet, or the board did not answer)."""
    import ray

    try:
        raw = ray.get(board.get.remote(key), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a missed heartbeat line is no error
        return None
    return json.loads(raw) if raw else None
