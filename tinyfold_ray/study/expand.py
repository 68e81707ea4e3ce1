"""A StudySpec's sweep -> its TrialSpecs in run order, with stable, readable names."""

from __future__ import annotations

import random
import re
from dataclasses import replace

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.study.groups import worker_groups
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
    """Every trial of the study, in the order they run, each with its `run_order` (0-based).

    Repeats are the outer loop, and within a repeat the configurations run in an order shuffled by a
    generator seeded with the study's `order_seed`: drift in the machine over a long study (heat, other
    jobs, a filling disk) then spreads across configurations instead of rising with the worker count,
    and the same study file always runs, resumes and lists (--dry-run) in the same order. A shared
    worker group's trials run together, where the first of them would have run.
    """
    points = sweep_points(spec)
    rng = random.Random(spec.order_seed)
    trials = [
        resolve(spec, point, repeat=repeat, trial_id=trial_id(point, repeat))
        for repeat in range(spec.repeats)
        for point in rng.sample(points, len(points))
    ]
    assert len({t.trial_id for t in trials}) == len(trials), "trial ids must be unique"
    # A shared worker group runs its trials one after another (study/groups.py): that is their order.
    in_order = [trial for group in worker_groups(trials) for trial in group]
    return [replace(trial, run_order=i) for i, trial in enumerate(in_order)]
