"""Resume by value: a finished trial is reused only if it ran with the settings the study asks for now,
on the same kind of machine and software (schema.IDENTITY_COLUMNS) that the trials would get now.

Stored rows come from `results.writer.existing_trials`, one file at a time: a column the row's file
lacks (a file older than the column) is an absent key, and a null the file holds is a None value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results.schema import (
    CONFIG_COLUMNS,
    IDENTITY_COLUMNS,
    RESOLVED_AT_RUN,
    config_hash,
    config_values,
    implied_settings,
)

MAX_LISTED_CHANGES = 6
# A changed setting is named as the study file names it (the batch keeps its column name, a sweep axis).
FILE_KEY = {"steps": "num_steps"}


def changed_settings(stored: dict[str, Any], trial: TrialSpec) -> list[str]:
    """How `trial`'s settings differ from those `stored` (a trial row) ran with: ["key old -> new"].

    Equal config hashes settle it. Otherwise every setting is compared, null included (num_threads
    null -> 4 is a change). A setting the row's file lacks held the default of the time the file was
    written (schema.implied_settings), marked "(implied)" in the message. fused_optimizer's column
    records what ran, so asking for "auto" (null) matches either.
    """
    wanted = config_values(trial)
    if stored.get("config_hash") == config_hash(wanted):
        return []
    implied = implied_settings()
    changes = []
    for key in CONFIG_COLUMNS:
        if key in RESOLVED_AT_RUN and wanted[key] is None:
            continue
        old = stored[key] if key in stored else implied[key]
        if old != wanted[key]:
            mark = "" if key in stored else " (implied)"
            changes.append(f"{FILE_KEY.get(key, key)} {old!r}{mark} -> {wanted[key]!r}")
    return changes


def changed_identity(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """How what a trial would run on now (`current`, IDENTITY_COLUMNS) differs from what `stored` (a
    trial row) recorded: ["column old -> new"]; environment variables one by one ("env NAME old -> new").

    Only what the row recorded is compared: a column its file lacks, or a null, is unknown (a machine
    has no default to imply). Every identity column is filled whenever a trial ran, except
    comm_library_version under gloo, and then backend (cpu) is compared.
    """
    changes = []
    for key in IDENTITY_COLUMNS:
        old, new = stored.get(key), current.get(key)
        if old is None or old == new:
            continue
        if key == "env_vars":
            changes += _changed_env(json.loads(old), json.loads(new or "{}"))
        else:
            changes.append(f"{key} {old!r} -> {new!r}")
    return changes


def _changed_env(old: dict[str, str], new: dict[str, str]) -> list[str]:
    def shown(env: dict[str, str], name: str) -> str:
        return repr(env[name]) if name in env else "unset"

    return [
        f"env {name} {shown(old, name)} -> {shown(new, name)}"
        for name in sorted(old.keys() | new.keys())
        if old.get(name) != new.get(name)
    ]


def check_unchanged(source: str, location: str, finished: list[TrialSpec], stored: dict[str, dict]) -> None:
    """Refuse, in one line, to reuse finished trials that ran with other settings."""
    _refuse_changed(
        source,
        location,
        finished,
        lambda trial: changed_settings(stored[trial.trial_id], trial),
        "ran with other settings",
    )


def check_same_identity(
    source: str,
    location: str,
    finished: list[TrialSpec],
    stored: dict[str, dict],
    current: dict[str, dict[str, Any]],
) -> None:
    """Refuse, in one line, to reuse finished trials that ran on another kind of machine or software
    than the trials would now (`current`: trial_id -> its IDENTITY_COLUMNS values, see study/identity.py)."""
    _refuse_changed(
        source,
        location,
        finished,
        lambda trial: changed_identity(stored[trial.trial_id], current[trial.trial_id]),
        "ran on another machine or software than the trials would now",
    )


def _refuse_changed(
    source: str,
    location: str,
    finished: list[TrialSpec],
    changes_of: Callable[[TrialSpec], list[str]],
    what: str,
) -> None:
    changed: dict[str, None] = {}  # an ordered set of "key old -> new"
    trials = []
    for trial in finished:
        changes = changes_of(trial)
        if changes:
            trials.append(trial.trial_id)
            changed.update(dict.fromkeys(changes))
    if not trials:
        return
    listed = list(changed)[:MAX_LISTED_CHANGES]
    more = f" and {len(changed) - len(listed)} more" if len(changed) > len(listed) else ""
    raise StudySpecError(
        f"{source}: {len(trials)} finished trial(s) in {location} (e.g. {trials[0]}) {what}: "
        f"{', '.join(listed)}{more}; give the study a new name or --output to keep both, "
        "or --rerun to run them again (earlier attempts are kept)"
    )
