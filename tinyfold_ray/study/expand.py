"""A StudySpec's sweep -> the ordered list of TrialSpecs, with stable, readable names."""

from __future__ import annotations

import re

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.study.spec import StudySpec, resolve, sweep_points

SHORT_NAMES = {"num_workers": "w", "batch_per_worker": "b", "global_batch": "gb"}


def trial_id(settings: dict, repeat: int) -> str:
    """The swept values, in canonical axis order, and the repeat: `w2-b4-learning_rate_0.001-r0`.

    The same configuration gets the same name however the study file orders its sweep keys or values.
    """
    parts = []
    for key, value in settings.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        short = SHORT_NAMES.get(key)
        parts.append(f"{short}{value}" if short else f"{key}_{value}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join([*parts, f"r{repeat}"]))


def expand(spec: StudySpec) -> list[TrialSpec]:
    """Every trial of the study. Repeats are the outer loop, so that drift in the machine over a long
    study spreads across configurations instead of biasing one of them."""
    points = sweep_points(spec)
    trials = [
        resolve(spec, point, repeat=repeat, trial_id=trial_id(point, repeat))
        for repeat in range(spec.repeats)
        for point in points
    ]
    assert len({t.trial_id for t in trials}) == len(trials), "trial ids must be unique"
    return trials
