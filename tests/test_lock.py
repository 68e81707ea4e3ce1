"""The study lock without Ray: drivers racing as real processes, half-written notes, a killed holder,
and the best-effort lock of URI outputs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from tinyfold_ray.study.lock import StudyLockedError, _BestEffortLock, study_lock

# fork: a racer starts in milliseconds, so the racers really do arrive together.
CTX = multiprocessing.get_context("fork")
HALF_WRITTEN = ["", '{"host": "vm", "pi']


def _race(output: str, ready, done, wins) -> None:
    ready.wait()
    try:
        with study_lock(output, "s"):
            wins.put(os.getpid())
            done.wait()  # hold the lock until every racer has tried
            return
    except StudyLockedError:
        pass
    done.wait()


def _hold(output: str, held, stop) -> None:
    with study_lock(output, "s"):
        held.set()
        stop.wait(60)


def _holder(output: str):
    held, stop = CTX.Event(), CTX.Event()
    proc = CTX.Process(target=_hold, args=(output, held, stop))
    proc.start()
    assert held.wait(30)
    return proc, stop


@pytest.mark.parametrize("left", HALF_WRITTEN)
def test_racing_drivers_exactly_one_wins_every_time(tmp_path, left):
    racers = 4
    for race in range(10):
        output = tmp_path / str(race)
        output.mkdir()
        (output / ".s.lock").write_text(left)  # left by a driver killed while writing its note
        ready, done, wins = CTX.Barrier(racers), CTX.Barrier(racers), CTX.Queue()
        procs = [CTX.Process(target=_race, args=(str(output), ready, done, wins)) for _ in range(racers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * racers
        winners = []
        while not wins.empty():
            winners.append(wins.get())
        assert len(winners) == 1, f"race {race}: {len(winners)} drivers won"


@pytest.mark.parametrize("note", HALF_WRITTEN)
def test_a_half_written_note_never_lets_a_second_driver_in(tmp_path, note):
    proc, stop = _holder(str(tmp_path))
    try:
        (tmp_path / ".s.lock").write_text(note)  # same file, so the holder's OS lock stays
        with pytest.raises(StudyLockedError, match="another driver is running this study on this output"):
            with study_lock(str(tmp_path), "s"):
                pass
    finally:
        stop.set()
        proc.join(30)


@pytest.mark.parametrize("note", HALF_WRITTEN)
def test_a_half_written_note_nobody_holds_is_no_obstacle(tmp_path, note):
    (tmp_path / ".s.lock").write_text(note)
    with study_lock(str(tmp_path), "s"):
        assert json.loads((tmp_path / ".s.lock").read_text())["pid"] == os.getpid()


def test_a_killed_holder_releases_the_lock_at_once(tmp_path):
    proc, _ = _holder(str(tmp_path))
    with pytest.raises(StudyLockedError, match=f"host {socket.gethostname()}, pid {proc.pid}, started "):
        with study_lock(str(tmp_path), "s"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    with study_lock(str(tmp_path), "s"):  # no wait, no takeover: the kernel released it with the process
        pass


# --- URI outputs: the best-effort lock, exercised on the local filesystem ---------------------------------


def _best_effort(tmp_path) -> _BestEffortLock:
    return _BestEffortLock(pafs.LocalFileSystem(), str(tmp_path / ".s.lock"))


def _note(**fields) -> dict:
    return {"host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", "token": "theirs"} | fields


def test_best_effort_refuses_a_live_driver_and_an_unreadable_note(tmp_path):
    (tmp_path / ".s.lock").write_text(json.dumps(_note(pid=os.getppid())))
    with pytest.raises(StudyLockedError, match=f"pid {os.getppid()}"):
        _best_effort(tmp_path).acquire()
    for note in HALF_WRITTEN:
        (tmp_path / ".s.lock").write_text(note)
        with pytest.raises(StudyLockedError, match="delete the lock"):
            _best_effort(tmp_path).acquire()
        assert (tmp_path / ".s.lock").read_text() == note  # never deleted


def test_best_effort_takes_over_a_dead_or_reused_pid(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    # A dead pid, then this process's pid recorded with another start time (the pid was reused).
    for gone in (_note(pid=int(dead.stdout)), _note(pid=os.getpid(), pid_start="1")):
        (tmp_path / ".s.lock").write_text(json.dumps(gone))
        lock = _best_effort(tmp_path)
        said = lock.acquire()
        assert said and f"pid {gone['pid']}" in said and "took over" in said
        assert json.loads((tmp_path / ".s.lock").read_text())["token"] == lock.note["token"]
        lock.release()
        assert not (tmp_path / ".s.lock").exists()


def test_best_effort_never_deletes_a_lock_it_does_not_own(tmp_path):
    lock = _best_effort(tmp_path)
    lock.acquire()
    # Another driver's note replaced ours (same host and pid on purpose: only the token tells them apart).
    theirs = json.dumps(_note(pid=os.getpid()))
    (tmp_path / ".s.lock").write_text(theirs)
    lock.release()
    assert (tmp_path / ".s.lock").read_text() == theirs
