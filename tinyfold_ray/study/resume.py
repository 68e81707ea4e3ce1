"""Resume by value: a finished trial is reused only if it ran with the settings the study asks for now."""

from __future__ import annotations

from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results.schema import CONFIG_COLUMNS, RESOLVED_AT_RUN, config_hash, config_values

MAX_LISTED_CHANGES = 6
# A changed setting is named as the study file names it (the batch keeps its column name, a sweep axis).
FILE_KEY = {"steps": "num_steps"}


def changed_settings(stored: dict[str, Any], trial: TrialSpec) -> list[str]:
    """How `trial`'s settings differ from those `stored` (a trial row) ran with: ["key old -> new"].

    Equal config hashes settle it. Otherwise every setting the stored row records is compared; a
    setting it lacks (a column newer than the file, or a schema-1 file) is not a change, so adding a
    setting to the code never invalidates finished work. fused_optimizer's column records what ran,
    so asking for "auto" (null) matches either.
    """
    wanted = config_values(trial)
    if stored.get("config_hash") == config_hash(wanted):
        return []
    return [
        f"{FILE_KEY.get(key, key)} {stored.get(key)!r} -> {wanted[key]!r}"
        for key in CONFIG_COLUMNS
        if stored.get(key) is not None
        and stored.get(key) != wanted[key]
        and not (key in RESOLVED_AT_RUN and wanted[key] is None)
    ]


def check_unchanged(source: str, location: str, finished: list[TrialSpec], stored: dict[str, dict]) -> None:
    """Refuse, in one line, to reuse finished trials that ran with other settings."""
    changed: dict[str, None] = {}  # an ordered set of "key old -> new"
    trials = []
    for trial in finished:
        changes = changed_settings(stored[trial.trial_id], trial)
        if changes:
            trials.append(trial.trial_id)
            changed.update(dict.fromkeys(changes))
    if not trials:
        return
    listed = list(changed)[:MAX_LISTED_CHANGES]
    more = f" and {len(changed) - len(listed)} more" if len(changed) > len(listed) else ""
    raise StudySpecError(
        f"{source}: {len(trials)} finished trial(s) in {location} (e.g. {trials[0]}) ran with other "
        f"settings: {', '.join(listed)}{more}; give the study a new name or --output to keep both, "
        "or --rerun to run them again (earlier attempts are kept)"
    )
