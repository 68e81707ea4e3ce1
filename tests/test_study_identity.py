"""Result identity on real CPU studies: groups by value, resume by value, stable ids, kept attempts.

One embedded Ray for the module and one small study (4 trials of the tiny model) that the checks share;
the checks that need no trial to run (reordered keys, changed settings) plan against its results.
"""

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL, embedded_ray
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.study import load_study
from tinyfold_ray.study.runner import plan, run_study

STUDY = {
    "name": "lr",
    # Two trials at a time on half a CPU per worker: these checks need results, not clean timings.
    "max_concurrent_trials": 2,
    "resources": {"device": "cpu", "cpus_per_worker": 0.5},
    "model": TINY_STUDY_MODEL,
    "train": {"num_steps": 2, "warmup_steps": 1},
    "sweep": {"learning_rate": [1e-3, 3e-4], "num_workers": [1, 2]},
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


@pytest.fixture(scope="module")
def ray_cluster():
    with embedded_ray(num_cpus=3):
        yield


@pytest.fixture(scope="module")
def lr_study(ray_cluster, tmp_path_factory):
    """The learning-rate x worker-count study, run once; (its directory, results root)."""
    tmp = tmp_path_factory.mktemp("lr")
    out = tmp / "results"
    _, report = run(write(tmp, STUDY), out)
    assert len(report.ok) == 4, report
    return tmp, out


def test_a_learning_rate_sweep_is_two_groups_with_their_own_speedups(lr_study):
    _, out = lr_study
    trials = load_results(out / "lr")
    assert sorted(trials.learning_rate.unique()) == [3e-4, 1e-3]
    assert trials.config_hash.nunique() == 4 and trials.attempt.eq(1).all()
    summary = summarize(trials).set_index(["group", "num_workers"])
    assert sorted(summary.index.unique("group")) == ["learning_rate=0.0003", "learning_rate=0.001"]
    for lr, group in trials.groupby("learning_rate"):
        thr = group.set_index("num_workers").throughput_samples_per_sec
        row = summary.loc[(f"learning_rate={lr}", 2)]
        assert row.n == 1 and row.speedup == pytest.approx(thr[2] / thr[1])


def test_reordered_sweep_keys_resume_every_trial(lr_study):
    tmp, out = lr_study
    reordered = {**STUDY, "sweep": dict(reversed(STUDY["sweep"].items()))}
    reordered = dict(reversed(reordered.items()))  # top-level keys too
    todo, finished = plan(load_study(write(tmp, reordered, "reordered.yaml")), str(out))
    assert todo == [] and len(finished) == 4


def test_a_changed_fixed_setting_is_refused_before_anything_starts(lr_study):
    tmp, out = lr_study
    changed = {
        **STUDY,
        "model": {**TINY_STUDY_MODEL, "c_z": 16},
        "train": {"num_steps": 3, "warmup_steps": 1},
    }
    path = write(tmp, changed, "changed.yaml")
    before = sorted(p.name for p in (out / "lr").rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "tinyfold_ray.study", str(path), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""  # nothing connected, nothing ran
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert (
        "4 finished trial(s)" in proc.stderr
        and "c_z 8 -> 16" in proc.stderr
        and "num_steps 2 -> 3" in proc.stderr
    )
    assert "--rerun" in proc.stderr and "new name or --output" in proc.stderr
    assert sorted(p.name for p in (out / "lr").rglob("*")) == before


def test_rerunning_a_failed_trial_keeps_both_attempts(ray_cluster, tmp_path):
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
