"""The driver's watchdog over a running trial: it ends a hung trial in seconds, and a trial past its
time limit whose ranks cannot end themselves, on public Ray APIs only.

While `trainer.fit()` runs, a thread reads the trial's heartbeats from the board (train/heartbeat.py)
every POLL_S. It gives a verdict when

- a rank made no progress: in the measured steps its step count has not moved for the trial's
  stall_slack_s (STALL_SLACK_S by default) + STALL_STEPS x its median step time, or in any phase its
  heartbeat went silent for SILENT_S (a stopped or dead process sends nothing; one blocked in a
  collective still beats); the same silence of a worker process still starting up (its start-up
  notes, train/startup.py);
- the deadline passed DEADLINE_GRACE_S ago and the ranks, which check the deadline themselves between
  steps and phases, did not end the trial (one is stuck inside a step or a collective); or the deadline
  passed before any rank began its train function (the worker group never finished starting);
- the study was interrupted (Ctrl-C: the study's board says so): the verdict INTERRUPTED, and the
  trial ends without a row (train/trial.py), to run again when the study resumes.

On a verdict it kills every worker actor that sent its handle (`ray.kill`), with its rank's notes or
its start-up notes: Ray Train waits on a worker group's start without a timeout. Ray Train's controller then
finds its workers dead and `fit()` raises; the trial's reason is the verdict, not that error.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tinyfold_ray.config import STALL_SLACK_S
from tinyfold_ray.train.heartbeat import ProgressChannel
from tinyfold_ray.train.phases import MEASURED, STARTING, order

POLL_S = 1.0
# A step's time varies with the load (a 2-core machine at load 15 stalls a process for seconds) and
# between ranks (a straggler is several times slower than its peers): only a step that takes ten times
# the median, and STALL_SLACK_S (config.py) more, is a hang.
STALL_STEPS = 10
# A heartbeat thread needs the GIL for microseconds once a second; 30 s of silence is no scheduling
# hiccup. The rank to name when several stalled is the one whose heartbeat is later than LATE_S.
SILENT_S = 30.0
LATE_S = 5.0
# The ranks raise TrialTimeoutError themselves at the deadline: this leaves them time to, so that the
# reason names what each rank was doing.
DEADLINE_GRACE_S = 10.0
UNKNOWN_HOST = "an unknown host"
INTERRUPTED = "interrupted: the study was stopped"


def stall_limit_s(step_s: float | None, slack_s: float = STALL_SLACK_S) -> float:
    """How long a rank in the measured steps may go without finishing a step."""
    return slack_s + STALL_STEPS * (step_s or 0.0)


def _unranked(process: dict[str, Any]) -> str:
    """How a reason names a worker process that has no rank yet."""
    return f"a worker on {process.get('host', UNKNOWN_HOST)}, pid {process['pid']}"


def _most_silent(starting: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return max(starting.values(), key=lambda p: p["silent_s"])


def hang_reason(
    ranks: dict[int, dict[str, Any]],
    starting: dict[str, dict[str, Any]] | None = None,
    slack_s: float = STALL_SLACK_S,
) -> str | None:
    """'rank r on host h made no progress for N s in <phase>' when a rank looks hung, else None; for a
    worker process still starting up (`starting`, the board's start-up notes), silent for SILENT_S,
    'a worker on h, pid p made no progress for N s in start-up'.

    The rank named is the one whose heartbeat stopped (a stopped process), else the one furthest behind
    (its peers wait for it in their next collective)."""
    reason = _rank_hang_reason(ranks, slack_s)
    if reason is None and starting:
        process = _most_silent(starting)
        if process["silent_s"] >= SILENT_S:
            reason = f"{_unranked(process)} made no progress for {process['silent_s']:.0f} s in {STARTING}"
    return reason


def _rank_hang_reason(ranks: dict[int, dict[str, Any]], slack_s: float) -> str | None:
    hung = [
        r
        for r, n in ranks.items()
        if n["silent_s"] >= SILENT_S
        or (n["phase"] == MEASURED and n["stalled_s"] >= stall_limit_s(n["step_s"], slack_s))
    ]
    if not hung:
        return None
    late = [r for r in ranks if ranks[r]["silent_s"] >= LATE_S]
    if late:
        rank = max(late, key=lambda r: ranks[r]["silent_s"])
    else:
        rank = min(
            hung, key=lambda r: (order(ranks[r]["phase"]), ranks[r]["done"] or 0, -ranks[r]["stalled_s"])
        )
    note = ranks[rank]
    idle = max(note["stalled_s"], note["silent_s"])
    return f"rank {rank} on {note.get('host', UNKNOWN_HOST)} made no progress for {idle:.0f} s in {note['phase']}"


def timeout_reason(
    limit_s: float,
    ranks: dict[int, dict[str, Any]],
    num_workers: int,
    starting: dict[str, dict[str, Any]] | None = None,
) -> str:
    """'timed out after L s in <phase> (rank r on host h)' for the rank furthest behind; a rank that
    never sent a note is still starting up: the reason names the start-up process silent longest, if
    any sent start-up notes (`starting`)."""
    missing = [r for r in range(num_workers) if r not in ranks]
    if missing and starting:
        return f"timed out after {limit_s:.0f} s in {STARTING} ({_unranked(_most_silent(starting))})"
    if missing:
        rank, phase, host = missing[0], STARTING, UNKNOWN_HOST
    else:
        rank = min(ranks, key=lambda r: (order(ranks[r]["phase"]), ranks[r]["done"] or 0, r))
        phase, host = ranks[rank]["phase"], ranks[rank].get("host", UNKNOWN_HOST)
    return f"timed out after {limit_s:.0f} s in {phase} (rank {rank} on {host})"


class Watchdog:
    """Watches one fit: use as a context manager around `trainer.fit()`.

    `verdict`: why it ended the trial (None: it did not; INTERRUPTED: the study was stopped).
    `notes()`: every rank's last note, read anew.
    """

    def __init__(
        self,
        channel: ProgressChannel,
        num_workers: int,
        poll_s: float = POLL_S,
        stall_slack_s: float = STALL_SLACK_S,
    ):
        assert channel.deadline is not None and channel.limit_s is not None
        self.channel, self.num_workers, self.poll_s = channel, num_workers, poll_s
        self.stall_slack_s = stall_slack_s
        self.verdict: str | None = None
        self._board = channel.board
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tinyfold-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        self._board.forget.remote(self.channel.run)

    def notes(self, timeout_s: float = 5.0) -> dict[int, dict[str, Any]]:
        """rank -> its last note (empty if the board does not answer in `timeout_s`)."""
        read = self._read(timeout_s)
        return read[0] if read is not None else {}

    def _read(
        self, timeout_s: float
    ) -> tuple[dict[int, dict[str, Any]], dict[str, dict[str, Any]], bool] | None:
        """(rank -> its last note, starting process -> its last start-up note, whether the study was
        stopped), or None."""
        import ray

        try:
            return ray.get(self._board.watch.remote(self.channel.run), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - without notes a reason only names less
            return None

    def _watch(self) -> None:
        killed: set[Any] = set()  # ranks and start-up processes whose actors were killed
        while not self._stop.wait(self.poll_s):
            read = self._read(timeout_s=5.0)
            if read is None:
                continue  # never judge on notes the board could not give
            ranks, starting, stopped = read
            if self.verdict is None:
                self.verdict = INTERRUPTED if stopped else hang_reason(ranks, starting, self.stall_slack_s)
            # Ranks raise at the deadline themselves; before any rank runs its train function (the
            # worker group still starting) none can, so there is nothing to wait for.
            grace = DEADLINE_GRACE_S if ranks else 0.0
            if self.verdict is None and time.time() >= self.channel.deadline + grace:
                self.verdict = timeout_reason(self.channel.limit_s, ranks, self.num_workers, starting)
            if self.verdict is not None:
                # Workers still starting up send their handles later: they are ended as they come.
                for key, note in [*ranks.items(), *starting.items()]:
                    if key not in killed and note["actor"] is not None:
                        _kill(note["actor"])
                        killed.add(key)


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # noqa: BLE001 - already gone: nothing to end
        pass
