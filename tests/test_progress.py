"""Progress of a running study: heartbeat lines of a running trial, the study's time left, and --dry-run's
marks of the trials already done. A real study's heartbeat lines: test_study_run.py (with Ctrl-C)."""

import os
import socket
import time
from dataclasses import replace

import pytest
import torch
import yaml

from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.results.schema import config_hash, config_values
from tinyfold_ray.results.writer import write_trial
from tinyfold_ray.study import expand, parse_study
from tinyfold_ray.study.cli import main
from tinyfold_ray.study.progress import TimeLeft, about, heartbeat_line
from tinyfold_ray.train.heartbeat import Heartbeat, ProgressChannel
from tinyfold_ray.train.loop import run_timed_loop


def trial(trial_id: str, workers: int) -> TrialSpec:
    return TrialSpec(trial_id=trial_id, num_workers=workers)


# --- time left ------------------------------------------------------------------------------------------


def test_time_left_is_unknown_until_a_trial_finished():
    assert TimeLeft().left_s([trial("w1-r0", 1)], {}) is None


def test_time_left_counts_each_trial_at_the_mean_of_its_own_settings():
    left = TimeLeft()
    left.finished(trial("w1-r0", 1), 10.0)
    left.finished(trial("w2-r0", 2), 30.0)
    left.finished(trial("w2-r1", 2), 50.0)
    # A repeat costs what its configuration cost (w1: 10, w2: 40), not the study's mean (30).
    assert left.left_s([trial("w1-r2", 1), trial("w2-r2", 2)], {}) == pytest.approx(10.0 + 40.0)


def test_time_left_of_unseen_settings_is_the_mean_of_all_finished_trials():
    left = TimeLeft()
    left.finished(trial("w1-r0", 1), 10.0)
    left.finished(trial("w2-r0", 2), 30.0)
    assert left.left_s([trial("w4-r0", 4)], {}) == pytest.approx(20.0)


def test_time_left_subtracts_what_running_trials_ran_and_shares_among_concurrent_trials():
    left = TimeLeft(concurrent=2)
    left.finished(trial("w1-r0", 1), 40.0)
    waiting = [trial("w1-r1", 1), trial("w1-r2", 1), trial("w1-r3", 1)]
    # w1-r1 has run 30 of its expected 40 s, w1-r2 ran past its expectation (counts 0), w1-r3 waits.
    assert left.left_s(waiting, {"w1-r1": 30.0, "w1-r2": 55.0}) == pytest.approx((10.0 + 0.0 + 40.0) / 2)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0.2, "about 1 s"),
        (41, "about 41 s"),
        (89, "about 89 s"),
        (185, "about 3 min"),
        (8100, "about 2 h 15 min"),
    ],
)
def test_time_left_reads_as_a_rough_duration(seconds, text):
    assert about(seconds) == text


# --- heartbeat ------------------------------------------------------------------------------------------


def test_heartbeat_line_names_the_phase_and_its_steps():
    spec = trial("w2-b4-r0", 2)
    note = {"phase": "measured steps", "done": 120, "steps": 500}
    assert heartbeat_line("[3/8]", spec, note, 41.2) == "  [3/8] w2-b4-r0: measured steps 120/500, 41 s"
    assert heartbeat_line("[3/8]", spec, None, 7) == "  [3/8] w2-b4-r0: starting its workers, 7 s"
    build = {"phase": "all-reduce probe", "done": None, "steps": None}
    assert heartbeat_line("[1/1]", spec, build, 60) == "  [1/1] w2-b4-r0: all-reduce probe, 60 s"
    compiled = replace(spec, train=TrainConfig(compile="default"))
    warmup = {"phase": "warm-up", "done": 0, "steps": 2}
    assert "warm-up (torch.compile compiles here) 0/2" in heartbeat_line("[1/1]", compiled, warmup, 50)


def _wait_for(written: list, predicate, timeout_s: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if written and predicate(written[-1]):
            return written[-1]
        time.sleep(0.01)
    pytest.fail(f"no such note: {written[-1:]}")


def test_heartbeat_sends_a_phase_change_at_once_and_steps_on_its_interval():
    written = []
    channel = ProgressChannel(board=None, key="w1-r0", every_s=0.05)
    with Heartbeat(channel, rank=1, send=written.append) as beat:
        _wait_for(written, lambda note: note["phase"] == "start-up")  # at once: the rank is alive
        beat.phase("measured steps", 500)
        note = _wait_for(written, lambda note: note["phase"] == "measured steps")
        assert {k: note[k] for k in ("rank", "phase", "done", "steps")} == {
            "rank": 1,
            "phase": "measured steps",
            "done": 0,
            "steps": 500,
        }
        assert note["pid"] == os.getpid() and note["host"] == socket.gethostname()
        beat.step(120)
        assert _wait_for(written, lambda note: note["done"] == 120)["steps"] == 500
        count = len(written)
        time.sleep(0.3)
        assert len(written) > count  # it keeps beating while nothing changes
    count = len(written)
    time.sleep(0.2)
    assert len(written) == count  # the thread stopped with the worker's work


def test_heartbeat_without_a_channel_sends_nothing_and_starts_no_thread():
    with Heartbeat(None, send=lambda note: pytest.fail("sent without a channel")) as beat:
        beat.phase("warm-up", 2)
        beat.step(1)
        assert beat._thread is None


def test_the_loop_reports_each_step_of_warm_up_then_of_the_measured_steps():
    class Data:
        def next_batch(self):
            return (torch.ones(2),)

    calls = []
    run_timed_loop(
        lambda batch: batch[0].sum(),
        Data(),
        warmup_steps=2,
        num_steps=3,
        device=torch.device("cpu"),
        after_warmup=lambda: calls.append("measured"),
        on_step=calls.append,
    )
    assert calls == [1, 2, "measured", 1, 2, 3]


# --- --dry-run marks ------------------------------------------------------------------------------------

STUDY = {
    "name": "marks",
    "resources": {"device": "cpu"},
    "train": {"num_steps": 3, "warmup_steps": 2},
    "sweep": {"num_workers": [1, 2, 4]},
}


def stored_row(spec: TrialSpec, status: str) -> dict:
    config = config_values(spec)
    names = {"study": spec.study, "trial_id": spec.trial_id, "repeat": spec.repeat}
    return {**config, "config_hash": config_hash(config), **names, "status": status}


@pytest.mark.parametrize("rerun", [False, True])
def test_dry_run_marks_trials_already_done_without_starting_ray(tmp_path, capsys, monkeypatch, rerun):
    import tinyfold_ray.ray_session

    monkeypatch.setattr(tinyfold_ray.ray_session, "connect", lambda **kw: pytest.fail("Ray started"))
    path = tmp_path / "marks.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = tmp_path / "out"
    by_id = {t.trial_id: t for t in expand(parse_study(STUDY))}
    write_trial(str(out), "marks", stored_row(by_id["w1-r0"], "ok"), [])
    write_trial(str(out), "marks", stored_row(by_id["w2-r0"], "failed"), [])

    assert main([str(path), "--dry-run", "--output", str(out)] + (["--rerun"] if rerun else [])) == 0
    lines = capsys.readouterr().out.splitlines()
    state = {line.split()[1]: line.split(None, 6)[6] for line in lines[2:]}
    assert state == {
        "w1-r0": "done, runs again" if rerun else "done, skipped",
        "w2-r0": "failed, runs again",
        "w4-r0": "to run",
    }
    assert f"1 already done in {out}" in lines[0]
    assert lines[1].split()[-1] == "state"


def test_dry_run_of_a_new_study_marks_every_trial_to_run_and_creates_nothing(tmp_path, capsys):
    path = tmp_path / "marks.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    assert main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "already done" not in lines[0]
    assert all(line.endswith("to run") for line in lines[2:])
    assert not (tmp_path / "out").exists()


def test_progress_every_must_be_seconds(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["any.yaml", "--progress-every", "-1"])
    assert exit_.value.code == 2
    assert "--progress-every: '-1' is not a number of seconds" in capsys.readouterr().err
