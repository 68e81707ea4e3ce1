"""Provenance the trial workers cannot know: the code's git commit, taken where the study starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit() -> str | None:
    """The commit of the checkout this package runs from (TINYFOLD_GIT_COMMIT overrides), else None."""
    if os.environ.get("TINYFOLD_GIT_COMMIT"):
        return os.environ["TINYFOLD_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if not commit:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5
    )
    return commit + ("-dirty" if dirty.stdout.strip() else "")
