"""Where results live: a local path or any pyarrow filesystem URI (s3://, gs://, hdfs://, file://)."""

from __future__ import annotations

import os

import pyarrow.fs as pafs

from tinyfold_ray.errors import ConfigError


def is_uri(location: str) -> bool:
    return "://" in location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path (made absolute) or a URI."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        return pafs.FileSystem.from_uri(location)
    except (pafs.ArrowException, ValueError, OSError) as e:
        raise ConfigError(f"cannot open results location {location!r}: {e}") from e


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *parts])
