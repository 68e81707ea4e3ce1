"""Storage faults never lose measured data: check the output up front, retry a failed write, and keep
a trial's rows in a local fallback location when the output still cannot be written.

The fallback location has the layout of any results location (`<root>/<study>/<trial_id>.parquet`,
steps in `_steps/`), so the summary reads it as it is, and copying its study folder into the real
output completes the study (a re-run then skips those trials).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from tinyfold_ray.errors import ConfigError, StorageError
from tinyfold_ray.results.storage import is_uri, one_line, resolve
from tinyfold_ray.results.writer import check_rows, write_trial

FALLBACK_ENV = "TINYFOLD_FALLBACK_DIR"
# Three tries over about 5 s ride out a brief outage (a network filesystem's hiccup, an object store's
# throttling) without holding the study up for long when the location is really gone.
RETRY_DELAYS_S = (1.0, 4.0)
_WRITE_ERRORS = (OSError, pa.ArrowException, ConfigError)


def default_fallback_root() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get(FALLBACK_ENV, "~/tinyfold-fallback")))


def chosen_fallback_root() -> str | None:
    """The fallback location the user set (FALLBACK_ENV), resolved where they set it: a study's trial
    drivers run in Ray's processes, which do not see the study driver's environment. None: not set, so
    each trial driver uses its own default."""
    return default_fallback_root() if FALLBACK_ENV in os.environ else None


def check_writable(output: str, study: str) -> None:
    """Raise StorageError (one line) unless a file can be created and removed in `<output>/<study>`.

    For a URI this also shows that the store is reachable and the credentials work.
    """
    fs, root = resolve(output)
    directory = f"{root}/{study}"
    probe = f"{directory}/.tinyfold-write-check-{uuid.uuid4().hex}"
    try:
        fs.create_dir(directory, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except _WRITE_ERRORS as e:
        kind = "reachable and writable" if is_uri(output) else "writable"
        raise StorageError(f"output {output!r} is not {kind}: {one_line(e)}") from None


def store_trial(
    output: str,
    study: str,
    row: dict[str, Any],
    step_rows: Sequence[dict[str, Any]],
    *,
    fallback_root: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str | None, str | None]:
    """(path in `output`, None) once a write succeeds; after the last retry fails,
    (None, path of the trial file in the fallback location). Raises StorageError only when the
    fallback cannot be written either.

    Rows the writer refuses (an unknown column, a value of the wrong type) raise that error at once:
    retrying or moving them to the fallback would not help, and blaming the storage would mislead.
    """
    check_rows(row, step_rows)
    error: BaseException | None = None
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return write_trial(output, study, row, step_rows), None
        except _WRITE_ERRORS as e:
            error = e
            if delay is not None:
                sleep(delay)
    root = fallback_root or default_fallback_root()
    try:
        path = write_trial(root, study, row, step_rows)
    except _WRITE_ERRORS as e:
        raise StorageError(
            f"trial {row['trial_id']}: cannot write {output!r} ({one_line(error)}) "
            f"nor the fallback {root!r} ({one_line(e)})"
        ) from None
    print(
        f"tinyfold-ray: trial {row['trial_id']}: cannot write {output!r} after {len(RETRY_DELAYS_S) + 1} "
        f"tries ({one_line(error)}); its rows are kept in {socket.gethostname()}:{path}",
        file=sys.stderr,
        flush=True,
    )
    return None, path
