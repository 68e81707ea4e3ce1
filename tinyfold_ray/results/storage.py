"""Where results live: a local path or any pyarrow filesystem URI (s3://, gs://, hdfs://, file://)."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs

from tinyfold_ray.errors import ConfigError


def is_uri(location: str) -> bool:
    return "://" in location


def absolute_location(location: str) -> str:
    """A local path made absolute against the current directory; a URI as it is.

    Entry points call this once, in the driver, before any trial starts: Ray Tune runs each trial
    with its working directory set to a folder of its own under Ray's temporary files, so a relative
    path resolved inside a trial would put the results there, out of sight and soon deleted.
    """
    if is_uri(location):
        return location
    return os.path.abspath(os.path.expanduser(os.fspath(location)))


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (made absolute) or a URI."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), absolute_location(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pafs.ArrowException, ValueError, OSError) as e:
        raise ConfigError(f"cannot open results location {location!r}: {e}") from e


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])


def visible_entries(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The entries of `path` that pyarrow and pd.read_parquet read: names starting with '_' or '.'
    (_steps, _summary, temporary files) are skipped. A missing `path` has none."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise ConfigError(f"cannot list {path!r}: {exc}") from exc
    return sorted((i for i in infos if not i.base_name.startswith(("_", "."))), key=lambda i: i.path)


def parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    return [
        i.path
        for i in visible_entries(fs, path)
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    ]


def atomic_write(fs: pafs.FileSystem, directory: str, name: str, write: Callable[[str], None]) -> str:
    """Call `write(tmp_path)`, then rename the file to `directory/name`.

    The temporary name starts with '.', which readers skip, so a crash mid-write leaves nothing a
    reader picks up; a failed write also removes its temporary file.
    """
    fs.create_dir(directory, recursive=True)
    final = f"{directory}/{name}"
    tmp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        fs.move(tmp, final)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    return final


def set_aside(fs: pafs.FileSystem, path: str, reason: str) -> str:
    """Move a result file into `_corrupt/` beside it (readers skip `_` folders), say why in one line,
    and return where it went. Its trial then counts as not run, and runs again."""
    directory, name = path.rsplit("/", 1)
    target_dir = f"{directory}/_corrupt"
    target = f"{target_dir}/{name}.{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        fs.create_dir(target_dir, recursive=True)
        fs.move(path, target)
    except OSError:
        target = path  # a read-only location: the file stays and is reported again on the next scan
    print(
        f"tinyfold-ray: result file {path} {reason}: set aside" + (f" as {target}" if target != path else ""),
        file=sys.stderr,
        flush=True,
    )
    return target


def one_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def atomic_write_bytes(fs: pafs.FileSystem, directory: str, name: str, data: bytes) -> str:
    """`atomic_write` of a bytes payload."""

    def write(tmp: str) -> None:
        with fs.open_output_stream(tmp) as stream:
            stream.write(data)

    return atomic_write(fs, directory, name, write)
