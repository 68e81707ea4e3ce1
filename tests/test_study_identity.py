"""Result identity on real CPU studies: groups by value, resume by value, stable ids, kept attempts.

The session's shared embedded Ray and one small study (2 trials of the tiny model) that the checks share;
the checks that need no trial to run (reordered keys, changed settings, another machine) plan against
its results, probing the embedded cluster for what the trials would run on now.
"""

import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL, run_cli, start_shared_ray
from tinyfold_ray.device import cpu_name
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.results.schema import IDENTITY_COLUMNS
from tinyfold_ray.results.writer import existing_trials
from tinyfold_ray.study import expand, load_study
from tinyfold_ray.study.cli import main as study_main
from tinyfold_ray.study.identity import probe
from tinyfold_ray.study.runner import as_run, plan, run_study

STUDY = {
    "name": "lr",
    # Both trials in one worker group (one Ray Train start-up): these checks need results, not the
    # fresh start-up of each trial's workers (test_study_run.py's).
    "resources": {"device": "cpu", "cpus_per_worker": 1, "worker_group": "shared"},
    "model": TINY_STUDY_MODEL,
    "train": {"num_steps": 2, "warmup_steps": 2},
    # One worker count: each group's speedups over its own baseline are test_summary.py's (on rows
    # like these), and a real study's speedup is test_study_run.py's.
    "sweep": {"learning_rate": [1e-3, 3e-4], "num_workers": [1]},
}


def write(tmp_path, study, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run(path, out):
    spec = load_study(path)
    todo, finished = plan(spec, str(out))
    report = run_study(spec, str(out), todo, skipped=len(finished), progress=lambda line: None)
    return todo, report


pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def lr_study(tmp_path_factory):
    """The learning-rate study, run once; (its directory, results root)."""
    start_shared_ray()  # set up before the tests' own `ray_cluster`
    tmp = tmp_path_factory.mktemp("lr")
    out = tmp / "results"
    _, report = run(write(tmp, STUDY), out)
    assert len(report.ok) == 2, report
    return tmp, out


def test_a_learning_rate_sweep_is_two_groups_each_on_its_own_baseline(lr_study):
    _, out = lr_study
    trials = load_results(out / "lr")
    assert sorted(trials.learning_rate.unique()) == [3e-4, 1e-3]
    assert trials.config_hash.nunique() == 2 and trials.attempt.eq(1).all()
    summary = summarize(trials).set_index(["group", "num_workers"])
    assert sorted(summary.index.unique("group")) == ["learning_rate=0.0003", "learning_rate=0.001"]
    for lr, group in trials.groupby("learning_rate"):
        row = summary.loc[(f"learning_rate={lr}", 1)]
        # Its own trial only, not averaged with the other learning rate's.
        assert row.n == 1 and row.speedup == 1.0
        assert row.throughput_samples_per_sec_mean == pytest.approx(group.throughput_samples_per_sec.iloc[0])


def test_reordered_sweep_keys_resume_every_trial(lr_study):
    tmp, out = lr_study
    reordered = {**STUDY, "sweep": dict(reversed(STUDY["sweep"].items()))}
    reordered = dict(reversed(reordered.items()))  # top-level keys too
    # The real probe runs here: the same machine and software, so every trial is kept.
    todo, finished = plan(load_study(write(tmp, reordered, "reordered.yaml")), str(out))
    assert todo == [] and len(finished) == 2


def test_the_probe_answers_what_the_trials_recorded_and_rows_record_their_run_order(lr_study):
    tmp, out = lr_study
    trials = expand(load_study(write(tmp, STUDY)))
    stored = existing_trials(str(out), "lr")
    found = probe([as_run(t) for t in trials])
    assert found.keys() == stored.keys() == {t.trial_id for t in trials}
    for trial_id, identity in found.items():
        assert identity == {k: stored[trial_id][k] for k in IDENTITY_COLUMNS}
    assert (identity["device_name"], identity["backend"], identity["node_gpus"]) == (cpu_name(), "cpu", 0)
    assert identity["comm_library_version"] is None  # gloo
    assert {i: row["run_order"] for i, row in stored.items()} == {t.trial_id: t.run_order for t in trials}


def test_a_study_resumed_on_another_machine_is_refused_unless_rerun(lr_study):
    tmp, out = lr_study
    moved = tmp / "moved"
    shutil.copytree(out, moved)
    first = sorted((moved / "lr").glob("*.parquet"))[0]
    table = pq.read_table(first)
    row = table.to_pandas()
    row["device_name"], row["torch_version"] = "NVIDIA H100 80GB HBM3", "2.5.0"
    pq.write_table(pa.Table.from_pandas(row, schema=table.schema, preserve_index=False), first)
    spec = load_study(write(tmp, STUDY))
    with pytest.raises(StudySpecError) as info:
        plan(spec, str(moved))
    message = str(info.value)
    assert f"1 finished trial(s) in {moved / 'lr'} (e.g. {first.stem})" in message and "\n" not in message
    assert f"device_name 'NVIDIA H100 80GB HBM3' -> {cpu_name()!r}" in message
    assert "torch_version '2.5.0' -> " in message and "--rerun" in message
    assert [t.trial_id for t in plan(spec, str(moved), rerun=True)[0]] == [t.trial_id for t in expand(spec)]


def test_a_changed_fixed_setting_is_refused_before_anything_starts(lr_study, capsys):
    tmp, out = lr_study
    changed = {
        **STUDY,
        "model": {**TINY_STUDY_MODEL, "c_z": 16},
        "train": {"num_steps": 3, "warmup_steps": 2},
    }
    path = write(tmp, changed, "changed.yaml")
    before = sorted(p.name for p in (out / "lr").rglob("*"))
    code, stdout, stderr = run_cli(
        "tinyfold_ray.study", study_main, [str(path), "--output", str(out)], capsys
    )
    assert code == 2 and stdout == ""  # nothing connected, nothing ran
    assert stderr.count("\n") == 1, stderr
    assert "2 finished trial(s)" in stderr and "c_z 8 -> 16" in stderr and "num_steps 2 -> 3" in stderr
    assert "--rerun" in stderr and "new name or --output" in stderr
    assert sorted(p.name for p in (out / "lr").rglob("*")) == before


def test_rerunning_a_failed_trial_keeps_both_attempts(tmp_path):
    # A worker resource no node has: the trial fails at its placement check, quickly, as a real study's
    # trial does when the cluster shrank after the study's up-front check.
    study = {**STUDY, "name": "fails", "sweep": {"num_workers": [1]}}
    study["resources"] = {**study["resources"], "extra": {"NO_SUCH_NODE_TYPE": 1}}
    path, out = write(tmp_path, study), tmp_path / "results"
    for _ in range(2):
        todo, report = run(path, out)
        assert [t.trial_id for t in todo] == ["w1-r0"] and report.failed == ["w1-r0"]
    latest = pd.read_parquet(out / "fails")
    assert list(zip(latest.trial_id, latest.attempt, latest.status)) == [("w1-r0", 2, "failed")]
    first = pd.read_parquet(out / "fails" / "_attempts" / "w1-r0.attempt1.parquet")
    assert first.status.tolist() == ["failed"] and "NO_SUCH_NODE_TYPE" in first.error.iloc[0]
    assert sorted(load_results(out / "fails", attempts=True).attempt) == [1, 2]
