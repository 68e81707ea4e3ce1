"""The bench's shared worker group figures (`python -m tinyfold_ray.bench trial`), from trial rows: no
Ray, no timing, only that the printed figures are computed from the rows and keep the bench's layout."""

import re

from tinyfold_ray.bench.__main__ import (
    SMOKE_TRAIN,
    _bench_spec,
    _shared_group_specs,
    format_rows,
    shared_group_figures,
)
from tinyfold_ray.study.groups import worker_groups

SETTINGS = "smoke model, 1 cpu worker"


def row(trial_id: str, wall: float, overhead: float | None, status="ok", error: str | None = None) -> dict:
    return {
        "trial_id": trial_id,
        "status": status,
        "error": error,
        "wall_time_s": wall,
        "overhead_s": overhead,
    }


def test_the_shared_group_figures_are_the_rows_wall_time_share_and_fixed_costs():
    trials = [row("shared0", 14.0, 10.0), row("shared1", 6.0, 2.0), row("shared2", 5.0, 1.0)]
    wall_row, cost_row = shared_group_figures(trials, SETTINGS)

    wall, count, share = re.fullmatch(
        r"([\d.]+) s for (\d+) trials \(measured steps ([\d.]+)% of it\)", wall_row.value
    ).groups()
    assert (float(wall), int(count)) == (25.0, 3)
    # (4 + 4 + 4) s of measured steps over the group's 25 s
    assert 0 < float(share) / 100 < 1
    assert float(share) == round(100 * 12 / 25, 1)

    first, later, of = re.fullmatch(
        r"first ([\d.]+) s, later ([\d.]+) s \(median of (\d+)\)", cost_row.value
    ).groups()
    assert (float(first), float(later), int(of)) == (10.0, 1.5, 2)
    assert wall_row.settings == cost_row.settings == SETTINGS

    # one line per figure under the header, in the bench's columns
    lines = format_rows([wall_row, cost_row]).splitlines()
    assert len(lines) == 3 and all(line.endswith(SETTINGS) for line in lines[1:])


def test_a_failed_trial_of_the_group_is_one_line_naming_it():
    trials = [
        row("shared0", 14.0, 10.0),
        row("shared1", 1.0, None, "failed", "RuntimeError: boom"),
        row("shared2", 0.0, None, "failed", "not run: trial shared1 of its worker group failed first"),
    ]
    (only,) = shared_group_figures(trials, SETTINGS)
    assert only.value == "shared1 failed: RuntimeError: boom"


def test_the_group_s_trials_are_the_fixed_cost_trial_with_their_own_names_and_repeats():
    specs = _shared_group_specs(3)
    assert [len(g) for g in worker_groups(specs)] == [3]
    assert [(s.trial_id, s.repeat) for s in specs] == [("shared0", 0), ("shared1", 1), ("shared2", 2)]
    fresh = _bench_spec("overhead0", SMOKE_TRAIN)
    assert all(
        (s.study, s.model, s.train, s.num_workers) == (fresh.study, fresh.model, fresh.train, 1)
        for s in specs
    )
