"""`worker_group: shared`: a study's trials of one worker count run in one worker group, one after
another; each keeps its own row, the group's start-up is paid once, and a failure loses no finished trial.
"""

import os
import re
import signal
import threading
import time
from dataclasses import replace

import pandas as pd
import pytest
import yaml

from tests.ray_helpers import SMALL_MODEL, TINY_STUDY_MODEL, environ_but_ray_process_env, run_cli
from tests.test_summary import frame, point, repeats
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.results import summarize
from tinyfold_ray.results.schema import PHASE_COLUMNS
from tinyfold_ray.study import expand, parse_study
from tinyfold_ray.study.cli import main as study_main
from tinyfold_ray.study.groups import worker_groups
from tinyfold_ray.summary import main as summary_main
from tinyfold_ray.train.trial import run_trials

STUDY = {
    "name": "shared",
    "repeats": 2,
    "resources": {"device": "cpu", "cpus_per_worker": 1, "worker_group": "shared"},
    "train": {"warmup_steps": 2},
    "sweep": {"num_workers": [1, 2, 4], "batch_per_worker": [2, 4]},
}


def test_a_shared_study_runs_each_worker_count_as_one_group_in_the_seeded_order():
    trials = expand(parse_study(STUDY))
    assert [t.run_order for t in trials] == list(range(12))
    groups = worker_groups(trials)
    assert [len(g) for g in groups] == [4, 4, 4]
    for group in groups:
        assert len({t.num_workers for t in group}) == 1
        # repeat 0's trials of the group before repeat 1's, each repeat in the study's shuffled order
        assert [t.repeat for t in group] == [0, 0, 1, 1]
    # A group's trials are consecutive in the run order: that is the order they run in.
    assert [t for g in groups for t in g] == trials
    fresh = expand(parse_study({**STUDY, "resources": {"device": "cpu"}}))
    assert all(len(g) == 1 for g in worker_groups(fresh))
    assert sorted(t.trial_id for t in fresh) == sorted(t.trial_id for t in trials)


def test_trials_share_a_group_only_when_they_need_the_same_worker_processes():
    base = TrialSpec(worker_group="shared", device="cpu")
    trials = [
        replace(base, trial_id="a"),
        replace(base, trial_id="b", cpus_per_worker=2.0),
        replace(base, trial_id="c", train=TrainConfig(batch_size=8)),  # same processes as a
        replace(base, trial_id="d", env={"OMP_PROC_BIND": "true"}),
        replace(base, trial_id="e", worker_group="fresh"),
        replace(base, trial_id="f", worker_group="fresh"),
    ]
    assert [[t.trial_id for t in g] for g in worker_groups(trials)] == [
        ["a", "c"],
        ["b"],
        ["d"],
        ["e"],
        ["f"],
    ]


def test_an_unknown_worker_group_is_one_line_naming_the_key():
    study = {**STUDY, "resources": {"worker_group": "warm"}}
    with pytest.raises(
        StudySpecError, match=r"resources\.worker_group='warm' is not allowed: choose one of fresh, shared"
    ):
        parse_study(study)


def test_the_summary_never_averages_shared_and_fresh_trials_into_one_point():
    rows = repeats([10, 10], num_workers=1, worker_group="fresh") + repeats(
        [18, 18], num_workers=2, worker_group="fresh"
    )
    rows += repeats([12, 12], num_workers=1, worker_group="shared") + repeats(
        [24, 24], num_workers=2, worker_group="shared"
    )
    s = summarize(frame(rows))
    assert list(s["group"].unique()) == ["worker_group=fresh", "worker_group=shared"]
    assert point(s, group="worker_group=fresh", num_workers=2)["speedup"] == pytest.approx(1.8)
    assert point(s, group="worker_group=shared", num_workers=2)["speedup"] == pytest.approx(2.0)


@pytest.mark.usefixtures("ray_cluster")
def test_a_shared_group_keeps_each_trials_row_and_a_failure_loses_no_finished_trial(tmp_path):
    training = TrainConfig(batch_size=2, num_steps=4, warmup_steps=2)
    base = TrialSpec(study="grp", device="cpu", worker_group="shared", model=SMALL_MODEL, train=training)
    # The second trial steps for seconds, long enough to see the first one's row written meanwhile.
    ok = [
        replace(base, trial_id="ok0"),
        replace(base, trial_id="ok1", train=replace(training, num_steps=400)),
    ]
    # A learning rate of 1e6 drives the loss to inf/nan: that trial raises on its rank.
    diverges = replace(base, trial_id="diverges", train=replace(training, learning_rate=1e6))
    after = replace(base, trial_id="after")

    outcomes = run_trials([*ok, diverges, after], str(tmp_path))

    rows = pd.read_parquet(tmp_path / "grp").set_index("trial_id")
    assert [o.row["trial_id"] for o in outcomes] == ["ok0", "ok1", "diverges", "after"]
    assert rows.loc[["ok0", "ok1"], "status"].eq("ok").all()
    assert rows["worker_group"].eq("shared").all()
    assert "loss became" in rows.loc["diverges", "error"]
    assert rows.loc["after", "error"] == "not run: trial diverges of its worker group failed first"
    first, second = (rows.loc[t] for t in ("ok0", "ok1"))
    # The group's start-up is the first trial's; the second starts where the first ended.
    assert second["startup_s"] < 1.0 < first["startup_s"]
    assert second["start_time"] == first["end_time"]
    for row in (first, second):
        assert sum(row[c] for c in PHASE_COLUMNS) == pytest.approx(row["wall_time_s"], abs=1e-6)
    steps = pd.read_parquet(tmp_path / "grp" / "_steps")
    assert sorted(steps["trial_id"].unique()) == ["ok0", "ok1"]
    # Each row is written as its trial ends, not when the group does: a driver killed mid-group keeps it.
    written = (tmp_path / "grp" / "ok0.parquet").stat().st_mtime
    assert written < second["end_time"].timestamp(), (written, second["end_time"])


@pytest.mark.usefixtures("ray_cluster", "home")
def test_a_shared_study_stopped_by_ctrl_c_keeps_the_trials_that_ended_and_resumes_by_trial(tmp_path, capsys):
    # Run as `python -m tinyfold_ray.study` runs it, in this process: Tune's settings are the run's only,
    # and nothing lands in the home directory (the `home` fixture).
    before = environ_but_ray_process_env()
    study = {
        "name": "shared-run",
        "resources": {"device": "cpu", "cpus_per_worker": 1, "worker_group": "shared"},
        "model": TINY_STUDY_MODEL,
        # Enough steps (a few ms each) that the group is still running its later trials at the Ctrl-C,
        # and that the heartbeat lines see its trials in turn.
        "train": {"num_steps": 250, "warmup_steps": 2},
        "sweep": {"num_workers": [1], "batch_per_worker": [2, 4], "learning_rate": [1e-3, 2e-3]},
    }
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "results"
    argv = [str(path), "--output", str(out), "--progress-every", "0.2"]

    # Ctrl-C once the group's first two trials have written their rows: its later trials get none.
    def ctrl_c_after_two_rows():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list((out / "shared-run").glob("*.parquet"))) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_after_two_rows, daemon=True).start()
    code, printed, err = run_cli("tinyfold_ray.study", study_main, argv, capsys)

    assert code == 130, printed[-3000:] + err[-3000:]
    assert environ_but_ray_process_env() == before
    rows = pd.read_parquet(out / "shared-run")
    kept = len(rows)
    # The trials that ended keep their rows, a prefix of the run order; the rest have none, and are
    # counted as not run (their group reports nothing: the count comes from the rows).
    assert kept in (2, 3) and sorted(rows["run_order"]) == list(range(kept))
    assert rows["status"].eq("ok").all() and rows["worker_group"].eq("shared").all()
    assert f"interrupted: {4 - kept} trial(s) not run; run the same command again to resume" in printed
    # The group's heartbeat lines name the trial its rank 0 runs, not always the group's first.
    beating = set(re.findall(r"^  \[\d/4\] (\S+): ", printed, re.M))
    assert len(beating) >= 2, printed

    # A partial result file, as a crashed copy leaves it: the summary skips it in one line; the study
    # sets it aside and runs that trial again, in one worker group with the trials not run.
    bad = out / "shared-run" / f"{rows.sort_values('run_order')['trial_id'].iloc[0]}.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    code, _, err = run_cli("tinyfold_ray.summary", summary_main, [str(out / "shared-run")], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert f"skipping unreadable result file {bad}" in err

    code, printed, err = run_cli("tinyfold_ray.study", study_main, argv, capsys)
    assert code == 0, printed[-3000:] + err[-3000:]
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith(f"tinyfold-ray: result file {bad} ")]
    assert "is unreadable" in line and "set aside" in line
    assert f"resuming: {kept - 1} finished trial(s) kept and skipped" in printed, printed
    left = 4 - kept + 1
    finished = [line for line in printed.splitlines() if re.match(rf"\[\d/{left}\] ", line)]
    assert len(finished) == left and finished[0].startswith(f"[1/{left}] {bad.stem} "), printed
    assert re.search(r"  ok; about \d+ s left$", finished[0]), finished
    assert finished[-1].endswith("  ok")  # nothing left after the last
    again = pd.read_parquet(out / "shared-run")
    assert sorted(again.trial_id) == sorted(t.trial_id for t in expand(parse_study(study)))
    assert again.status.eq("ok").all() and len(list((out / "shared-run" / "_corrupt").iterdir())) == 1
    # One group: only the first trial in its run paid the start-up.
    rerun = again[again.trial_id.isin([bad.stem, *(set(again.trial_id) - set(rows.trial_id))])]
    by_start = rerun.sort_values("start_time")
    assert by_start["startup_s"].iloc[0] > 1.0 > by_start["startup_s"].iloc[1:].max()
