"""One driver per study output: a lock the kernel releases when its driver dies.

Two drivers on the same study and output would plan the same trials and write them twice. The lock is
`<output>/.<study>.lock` (its leading '.' hides it from pandas and pyarrow).

On a local or NFS output it is an OS lock (`filelock`: flock, which NFS serves through its lock
manager). The kernel releases it when the driver's process ends, however it ends (kill -9 included), so
a dead driver leaves nothing to take over. The file itself carries only a note (host, pid, start time)
written after the lock is taken, for the refusal message; the note decides nothing, so an empty or
half-written one can never let a second driver in. The file stays in place on release (removing it
would let a waiter lock the removed file while a newcomer locks a new one); its note is emptied.

On a URI output (s3://, gs://, ...) object stores have no OS lock and no exclusive create, so the lock
is best effort: a note with a random token, created if absent and read back to check it is ours; a
heartbeat refreshes it every HEARTBEAT_S while it still carries our token. It is taken over only when
its driver is provably gone (same host, pid not running) or its heartbeat is older than STALE_AFTER_S,
and then deleted only if it still carries the token that was judged stale; release deletes it only if
it carries ours. What it cannot guarantee: between reading a note and writing or deleting it another
driver can act (there is no compare-and-swap), so two drivers starting within that moment can both run;
and a note that cannot be read is never taken over, so it has to be removed by hand.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from errno import ENOLCK, ENOSYS, EOPNOTSUPP
from typing import Any

import pyarrow.fs as pafs
from filelock import FileLock, Timeout

from tinyfold_ray.errors import StorageError, StudySpecError
from tinyfold_ray.results.storage import one_line, resolve

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# How long a refused driver waits for the holder's note: the holder writes it just after taking the lock.
NOTE_WAIT_S = 1.0


class StudyLockedError(StudySpecError):
    """Another driver runs this study on this output."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a reused pid from the lock's driver."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _parse(data: bytes) -> dict[str, Any] | None:
    """The holder's note, or None when it is empty or half-written."""
    try:
        note = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return note if isinstance(note, dict) and "pid" in note else None


def _describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


def _refusal(
    path: str, holder: dict[str, Any] | None, fix: str = "wait for it, or stop it"
) -> StudyLockedError:
    who = _describe(holder) if holder else "its note is not written yet or unreadable"
    return StudyLockedError(
        f"another driver is running this study on this output ({who}); {fix} (lock: {path})"
    )


def _new_note() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "token": secrets.token_hex(8),
        "heartbeat": time.time(),
    }


class _OsLock:
    """flock on the lock file; the note is written through the locked descriptor."""

    def __init__(self, path: str):
        self.path = path
        self.note = _new_note()
        self._fd: int | None = None
        # No soft fallback: a soft lock outlives a killed driver, which is what this lock is for.
        self._lock = FileLock(path, timeout=0, fallback_to_soft=False, on_acquired=self._write_note)

    def _write_note(self, fd: int) -> None:
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.note).encode(), 0)

    def _read_note(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + NOTE_WAIT_S
        while True:
            try:
                with open(self.path, "rb") as f:
                    note = _parse(f.read())
            except FileNotFoundError:
                note = None
            if note is not None or time.monotonic() > deadline:
                return note
            time.sleep(0.05)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except Timeout:
            raise _refusal(self.path, self._read_note()) from None
        except OSError as e:
            if e.errno in (ENOSYS, ENOLCK, EOPNOTSUPP):
                raise StorageError(
                    f"the output's filesystem has no file locks (flock), which keep one driver per study "
                    f"({one_line(e)}); use a local or NFS folder with locking, or a URI"
                ) from None
            raise

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no note naming a driver that is gone
        self._lock.release()


class _BestEffortLock:
    """A note created if absent on a filesystem without OS locks (object stores); see the module doc."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path = fs, path
        self.note = _new_note()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _read(self) -> tuple[bool, dict[str, Any] | None]:
        """(exists, note); the note is None when the file cannot be parsed."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                return True, _parse(f.read())
        except FileNotFoundError:
            return False, None

    def _write(self) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(self.note).encode())

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            if not _pid_alive(pid):
                return True
            recorded = holder.get("pid_start")
            return recorded is not None and _process_start(pid) not in (None, recorded)
        return time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S

    def acquire(self) -> str | None:
        taken_over = None
        exists, holder = self._read()
        if exists:
            if holder is None:
                raise _refusal(self.path, None, "if no driver runs it, delete the lock")
            if not self._is_stale(holder):
                raise _refusal(self.path, holder)
            # Delete only the note judged stale: another driver may have replaced it meanwhile.
            current = self._read()[1]
            if current != holder:
                raise _refusal(self.path, current)
            self.fs.delete_file(self.path)
            taken_over = f"took over the lock of a driver that is gone ({_describe(holder)})"
        self._write()
        # Last writer wins on an object store: read back, so that of two drivers writing at once the
        # one whose note was overwritten sees it and gives way.
        time.sleep(0.2)
        mine = self._read()[1]
        if mine is None or mine.get("token") != self.note["token"]:
            raise _refusal(self.path, mine)
        self._beat = threading.Thread(target=self._heartbeat, name="tinyfold-lock-heartbeat", daemon=True)
        self._beat.start()
        return taken_over

    def _owned(self) -> bool:
        try:
            note = self._read()[1]
        except OSError:
            return False
        return note is not None and note.get("token") == self.note["token"]

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self._owned():
                return  # taken over by another driver: never overwrite its note
            self.note["heartbeat"] = time.time()
            try:
                self._write()
            except OSError:
                pass  # the next beat tries again; the writes themselves report storage trouble

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self._owned():
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass


@contextmanager
def study_lock(output: str, study: str, say=print) -> Iterator[None]:
    """Hold the study's lock for the block; raise StudyLockedError if a live driver holds it."""
    fs, root = resolve(output)
    path = f"{root}/.{study}.lock"
    try:
        fs.create_dir(root, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            lock: _OsLock | _BestEffortLock = _OsLock(path)
            lock.acquire()
        else:
            lock = _BestEffortLock(fs, path)
            note = lock.acquire()
            if note:
                say(note)
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"output {root!r} is not writable: {one_line(e)}") from None
    try:
        yield
    finally:
        lock.release()
