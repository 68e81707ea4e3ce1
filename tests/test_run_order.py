"""Run order: repeat after repeat, each repeat's trials shuffled by the study's order_seed. No Ray here."""

import pytest

from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results.schema import config_hash, config_values
from tinyfold_ray.study import expand, load_study, parse_study
from tinyfold_ray.study.cli import main
from tinyfold_ray.study.spec import sweep_points

STUDY = {
    "name": "order",
    "repeats": 3,
    "train": {"warmup_steps": 2},
    "sweep": {"num_workers": [1, 2, 4, 8], "batch_per_worker": [2, 4]},
}


def ids(trials):
    return [t.trial_id for t in trials]


def grid(study) -> list[str]:
    """The sweep's combinations in canonical order, as they ran before run orders were shuffled."""
    spec = parse_study(study)
    return [
        f"w{p['num_workers']}-b{p['batch_per_worker']}-r{r}"
        for r in range(spec.repeats)
        for p in sweep_points(spec)
    ]


def test_repeats_run_in_turn_and_each_repeat_in_a_seeded_shuffle():
    trials = expand(parse_study(STUDY))
    assert [t.run_order for t in trials] == list(range(24))
    assert [t.repeat for t in trials] == [0] * 8 + [1] * 8 + [2] * 8
    points = grid(STUDY)
    assert sorted(ids(trials)) == sorted(points)  # every trial, once
    for repeat in range(3):
        shuffled = ids(trials[8 * repeat : 8 * repeat + 8])
        assert shuffled != points[8 * repeat : 8 * repeat + 8]
        # the worker count does not rise through the repeat (drift would look like scaling)
        workers = [t.num_workers for t in trials[8 * repeat : 8 * repeat + 8]]
        assert workers != sorted(workers)
    # Not one shuffle for every repeat either.
    assert len({tuple(i.rsplit("-", 1)[0] for i in ids(trials[r * 8 : r * 8 + 8])) for r in range(3)}) > 1


def test_the_seed_decides_the_order_and_nothing_else():
    default = expand(parse_study(STUDY))
    assert ids(expand(parse_study({**STUDY, "order_seed": 0}))) == ids(default)  # 0 is the default
    other = expand(parse_study({**STUDY, "order_seed": 7}))
    assert ids(other) != ids(default) and sorted(ids(other)) == sorted(ids(default))
    # The run order is recorded, but no setting: the trial's identity and hash stay.
    by_id = {t.trial_id: t for t in other}
    moved = [t for t in default if by_id[t.trial_id].run_order != t.run_order]
    assert moved and all(
        config_hash(config_values(t)) == config_hash(config_values(by_id[t.trial_id])) for t in moved
    )


def test_order_seed_must_be_an_integer():
    with pytest.raises(StudySpecError, match="order_seed='x' is not allowed: must be an integer"):
        parse_study({**STUDY, "order_seed": "x"}, source="s.yaml")


def test_dry_run_lists_the_trials_in_the_order_they_run(tmp_path, capsys):
    path = tmp_path / "order.yaml"
    path.write_text(
        "name: order\nrepeats: 3\norder_seed: 3\ntrain: {warmup_steps: 2}\n"
        "sweep: {num_workers: [1, 2, 4, 8], batch_per_worker: [2, 4]}\n"
    )
    assert main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "in the order they run (order_seed 3)" in lines[0]
    listed = [line.split()[1] for line in lines[2:]]
    assert listed == ids(expand(load_study(path))) and listed != grid({**STUDY, "order_seed": 3})
    assert [int(line.split()[0]) for line in lines[2:]] == list(range(24))
    assert not (tmp_path / "out").exists()
