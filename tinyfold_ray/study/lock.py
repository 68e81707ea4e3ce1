"""One driver per study output: a lock file naming the driver that holds it.

Two drivers on the same study and output would plan the same trials and write them twice. The lock is
`<output>/.<study>.lock` (its leading '.' hides it from pandas and pyarrow), holding the host, pid and
start time of its driver. A local lock is created atomically (O_EXCL). A lock whose driver is gone
(same host, pid no longer running, or running but started at another time: a reused pid) is taken over; a lock from another host is taken over only when
its heartbeat, refreshed by the running driver every HEARTBEAT_S, is older than STALE_AFTER_S.
On a URI output the lock is best effort: object stores have no exclusive create.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

from tinyfold_ray.errors import StorageError, StudySpecError
from tinyfold_ray.results.storage import is_uri, one_line, resolve

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class StudyLockedError(StudySpecError):
    """Another driver runs this study on this output."""


def lock_path(output: str, study: str) -> str:
    return f"{resolve(output)[1]}/.{study}.lock"


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


def _is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", -1))
        if not _pid_alive(pid):
            return True
        recorded = holder.get("pid_start")
        return recorded is not None and _process_start(pid) not in (None, recorded)
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S


def _describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"


class _Lock:
    def __init__(self, output: str, study: str):
        self.fs, root = resolve(output)
        self.root = root
        self.path = f"{root}/.{study}.lock"
        self.local = not is_uri(output)
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return json.loads(f.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable or half-written: treat as held by an unknown, long-dead driver

    def _create(self) -> bool:
        """Create the lock file if there is none; False if one exists."""
        data = json.dumps(self.record).encode()
        if self.local:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            return False
        self._write()
        return True

    def _write(self) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(self.record).encode())

    def acquire(self) -> str | None:
        """Take the lock; return a line about a stale lock taken over, or None."""
        try:
            self.fs.create_dir(self.root, recursive=True)
            return self._acquire()
        except OSError as e:
            raise StorageError(f"output {self.root!r} is not writable: {one_line(e)}") from None

    def _acquire(self) -> str | None:
        taken_over = None
        for _ in range(3):
            if self._create():
                break
            holder = self._read()
            if holder is None:
                continue  # released in between: try again
            if not _is_stale(holder):
                raise StudyLockedError(
                    f"another driver is running this study on this output ({_describe(holder)}); "
                    f"wait for it, or stop it (lock: {self.path})"
                )
            # Stale: remove it and create ours, so that two drivers taking over at once still race
            # on the exclusive create and only one wins.
            self.fs.delete_file(self.path)
            taken_over = f"took over the lock of a driver that is gone ({_describe(holder)})"
        else:
            raise StudyLockedError(f"cannot take the study lock {self.path}")
        self._beat = threading.Thread(target=self._heartbeat, name="tinyfold-lock-heartbeat", daemon=True)
        self._beat.start()
        return taken_over

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.record["heartbeat"] = time.time()
            try:
                self._write()
            except OSError:
                pass  # the next beat tries again; the writes themselves report storage trouble

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self._read()
        if holder and holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            try:
                self.fs.delete_file(self.path)
            except OSError:
                pass


@contextmanager
def study_lock(output: str, study: str, say=print) -> Iterator[None]:
    """Hold the study's lock for the block; raise StudyLockedError if a live driver holds it."""
    lock = _Lock(output, study)
    note = lock.acquire()
    if note:
        say(note)
    try:
        yield
    finally:
        lock.release()
