"""The phases a worker goes through, in order: the one list that the worker's notes, the time limit's
and the hang watchdog's reasons (train/faults.py, train/watchdog.py), the study's heartbeat lines and
the trial's time split (train/trial.py phase_times) all read. No torch, no Ray."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    """What a reason or a heartbeat line calls it."""
    key: str | None
    """Its start time's key in the worker's `times` (trial.phase_times); None: not timed on its own."""


PHASES = (
    # Before the worker noted any phase: worker processes and the process group are still starting.
    Phase("start-up", None),
    Phase("build", "build"),
    Phase("warm-up", "warmup"),
    Phase("measured steps", "measured"),
    Phase("time breakdown", "reference"),
    Phase("replica check", None),  # timed within the time breakdown's share
    Phase("profile", "profile"),
    Phase("all-reduce probe", "probe"),
    Phase("teardown", "teardown"),
)
NAMES = tuple(p.name for p in PHASES)
STARTING = PHASES[0].name
MEASURED = "measured steps"
TIMED_KEYS = tuple(p.key for p in PHASES if p.key is not None)


def order(name: str) -> int:
    """Position of phase `name` (a name no worker sends counts as start-up: furthest behind)."""
    return NAMES.index(name) if name in NAMES else 0


class PhaseClock:
    """When this worker began each timed phase (epoch seconds on its host's clock).

    A phase a run skips (the time breakdown with one worker, the profile when none is asked for) gets
    the start of the next phase that ran, so it lasts 0 s and the split still adds up."""

    def __init__(self, now: float | None = None):
        self._began: dict[str, float] = {}
        self.current = STARTING
        if now is not None:
            self._began["build"] = now

    def enter(self, name: str) -> None:
        assert name in NAMES, name
        self.current = name
        key = PHASES[NAMES.index(name)].key
        if key is not None:
            self._began.setdefault(key, time.time())

    def times(self) -> dict[str, float]:
        filled, following = {}, None
        for key in reversed(TIMED_KEYS):
            following = self._began.get(key, following)
            if following is not None:
                filled[key] = following
        return {key: filled[key] for key in TIMED_KEYS if key in filled}
