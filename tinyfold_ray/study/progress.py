"""What a running study prints between its result lines: heartbeats of long trials and the time left."""

from __future__ import annotations

import statistics
from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.results.schema import config_hash, config_values

HEARTBEAT_S = 30.0
"""Seconds between heartbeat lines of a running trial: often enough to see it move in `ray job logs`,
rarely enough that a study of short trials prints none."""


def heartbeat_line(position: str, trial: TrialSpec, note: dict[str, Any] | None, elapsed_s: float) -> str:
    """`  [3/8] w2-b4-r0: measured steps 120/500, 41 s` from rank 0's last note (None: none yet)."""
    if note is None:
        doing = "starting its workers"
    else:
        doing = note["phase"]
        if doing == "warm-up" and trial.train.compile != "none":
            doing = "warm-up (torch.compile compiles here)"
        if note.get("steps"):
            doing += f" {note['done']}/{note['steps']}"
    return f"  {position} {trial.trial_id}: {doing}, {elapsed_s:.0f} s"


class TimeLeft:
    """The study's time left, from the wall times of the trials it finished.

    A trial left to run is expected to take as long as the finished trials with its settings took on
    average (repeats of one configuration cost alike), or, when none has finished yet, the average of
    all finished trials; a running trial is expected to need that less what it has already run. The
    sum is shared among the trials that run at once.
    """

    def __init__(self, concurrent: int = 1):
        self.concurrent = max(1, concurrent)
        self._walls: dict[str, list[float]] = {}

    def finished(self, trial: TrialSpec, wall_s: float) -> None:
        self._walls.setdefault(_settings_key(trial), []).append(wall_s)

    def expected_s(self, trial: TrialSpec) -> float | None:
        same = self._walls.get(_settings_key(trial))
        if same:
            return statistics.fmean(same)
        every = [wall for walls in self._walls.values() for wall in walls]
        return statistics.fmean(every) if every else None

    def left_s(self, waiting: list[TrialSpec], running: dict[str, float]) -> float | None:
        """Seconds until `waiting` and the running trials (trial_id -> seconds it has run; each also in
        `waiting`) are done; None before any trial finished."""
        total = 0.0
        for trial in waiting:
            expected = self.expected_s(trial)
            if expected is None:
                return None
            total += max(0.0, expected - running.get(trial.trial_id, 0.0))
        return total / self.concurrent


def about(seconds: float) -> str:
    """A rough duration for people: `about 40 s`, `about 3 min`, `about 2 h 15 min`."""
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


def _settings_key(trial: TrialSpec) -> str:
    return config_hash(config_values(trial))
