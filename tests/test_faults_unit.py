"""Faults that need no Ray cluster: failure reasons from structured errors, the hang watchdog's and the
time limit's verdicts, the heartbeat board, storage retries and the fallback, corrupt result files, the
study lock, concurrent placement."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray.exceptions import ActorDiedError
from ray.train import WorkerGroupError

from tests.ray_helpers import SHORT_TRAINING, SMALL_MODEL
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.errors import StorageError, TrainingError, TrialTimeoutError
from tinyfold_ray.results import load_results, safe_write
from tinyfold_ray.results.writer import existing_trials, write_trial
from tinyfold_ray.study.lock import StudyLockedError, study_lock
from tinyfold_ray.train import faults, heartbeat, phases, watchdog
from tinyfold_ray.train.heartbeat import Heartbeat, ProgressBoard, ProgressChannel
from tinyfold_ray.train.phases import NAMES, PhaseClock
from tinyfold_ray.train.resources import trials_fit_together

NOTES = {
    0: {"phase": "measured steps", "host": "node-a", "node_id": "n0", "device": "cuda:0"},
    1: {"phase": "measured steps", "host": "node-b", "node_id": "n1", "device": "cuda:1"},
}


def _group_error(failures: dict) -> WorkerGroupError:
    return WorkerGroupError(error_message="Training failed due to worker errors:", worker_failures=failures)


def _dead_worker() -> Exception:
    """What Ray reports for a worker process that is gone (its own error class, not the train
    function's)."""
    return ActorDiedError()


# --- failure reasons --------------------------------------------------------------------------------------


def test_a_dead_worker_names_its_rank_and_host():
    reason = faults.describe_failure(_group_error({1: _dead_worker()}), NOTES, alive_node_ids={"n0", "n1"})
    assert reason.startswith("worker process died (") and reason.endswith("(rank 1 on node-b)")


def test_a_dead_worker_on_a_dead_node_is_a_lost_node():
    reason = faults.describe_failure(_group_error({1: _dead_worker()}), NOTES, alive_node_ids={"n0"})
    assert reason == "node node-b lost (rank 1 on node-b)"


def test_a_worker_exception_keeps_type_and_message_and_names_the_rank():
    error = _group_error({0: TrainingError("loss became nan at measured step 3")})
    reason = faults.describe_failure(error, NOTES, alive_node_ids={"n0", "n1"})
    assert reason == "TrainingError: loss became nan at measured step 3 (rank 0 on node-a)"


def test_out_of_memory_names_rank_and_device():
    error = _group_error({1: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")})
    reason = faults.describe_failure(error, NOTES, alive_node_ids={"n0", "n1"})
    assert reason == "out of memory on rank 1 (device cuda:1, host node-b)"


def test_a_time_out_names_the_phase_of_the_rank_furthest_behind():
    notes = {0: {**NOTES[0], "phase": "measured steps"}}  # rank 1 never noted a phase: still starting
    error = _group_error({0: TrialTimeoutError(30.0), 1: TrialTimeoutError(30.0)})
    reason = faults.describe_failure(error, notes, alive_node_ids=None)
    assert reason == "timed out after 30 s in start-up (rank 1 on an unknown host)"


@pytest.mark.parametrize("phase", NAMES)
def test_a_time_out_in_any_phase_names_it_as_the_rank_raised_it(phase):
    # Each rank's own error names the phase that ran out and where; its peer's broken collective (the
    # timed-out rank left it) is a consequence, not the cause.
    error = _group_error(
        {
            0: RuntimeError("Connection closed by peer [127.0.0.1]:16099"),
            1: TrialTimeoutError(30.0, phase=phase, rank=1, host="node-b"),
        }
    )
    reason = faults.describe_failure(error, NOTES, alive_node_ids={"n0", "n1"})
    assert reason == f"timed out after 30 s in {phase} (rank 1 on node-b)"


def test_ranks_timed_out_in_later_phases_name_the_one_furthest_behind():
    error = _group_error(
        {
            0: TrialTimeoutError(30.0, phase="profile", rank=0, host="node-a"),
            1: TrialTimeoutError(30.0, phase="time breakdown", rank=1, host="node-b"),
        }
    )
    assert (
        faults.describe_failure(error, NOTES, None)
        == "timed out after 30 s in time breakdown (rank 1 on node-b)"
    )


def test_a_dead_worker_comes_before_the_errors_it_caused_in_its_peers():
    error = _group_error({0: RuntimeError("Connection closed by peer [127.0.0.1]:16099"), 1: _dead_worker()})
    reason = faults.describe_failure(error, NOTES, alive_node_ids={"n0", "n1"})
    first, second = reason.split("; ")
    assert first.startswith("worker process died") and first.endswith("(rank 1 on node-b)")
    assert second == "RuntimeError: Connection closed by peer [127.0.0.1]:16099 (rank 0 on node-a)"


def test_the_real_cause_wins_over_the_time_outs_it_caused():
    error = _group_error({0: TrialTimeoutError(30.0), 1: _dead_worker()})
    reason = faults.describe_failure(error, NOTES, alive_node_ids={"n0"})
    assert reason == "node node-b lost (rank 1 on node-b)"


def test_an_error_without_per_rank_failures_is_left_to_the_caller():
    assert faults.describe_failure(RuntimeError("controller broke"), NOTES, None) is None


# --- the time limit ---------------------------------------------------------------------------------------


def test_the_default_time_limit_grows_with_the_work_and_a_setting_overrides_it():
    spec = TrialSpec(model=SMALL_MODEL, train=SHORT_TRAINING)
    longer = replace(spec, train=replace(SHORT_TRAINING, num_steps=SHORT_TRAINING.num_steps * 100))
    default_model = replace(spec, model=replace(SMALL_MODEL, seq_len=64, c_z=128, c_m=64, num_blocks=4))
    base = faults.time_limit_s(spec)
    assert base >= spec.start_timeout_s + faults.BUILD_ALLOWANCE_S
    assert faults.time_limit_s(longer) > base
    # The reference model at its default batch: far more work per step than the smallest model.
    assert faults.time_limit_s(replace(default_model, train=TrainConfig())) > faults.time_limit_s(
        replace(spec, train=TrainConfig())
    )
    assert faults.time_limit_s(replace(spec, trial_timeout_s=42.0)) == 42.0
    # GPU workers are allowed less per step than CPU ones; compiling adds its own allowance.
    heavy = replace(default_model, train=TrainConfig(batch_size=8, num_steps=50))
    assert faults.time_limit_s(heavy, use_gpu=True) < faults.time_limit_s(heavy)
    compiled = replace(heavy, train=replace(heavy.train, compile="default"))
    assert faults.time_limit_s(compiled, use_gpu=True) > faults.time_limit_s(heavy, use_gpu=True)


def test_study_key_sets_every_trials_limit(tmp_path):
    from tinyfold_ray.study.expand import expand
    from tinyfold_ray.study.spec import parse_study

    raw = {"name": "t", "resources": {"trial_timeout_s": 90}, "sweep": {"num_workers": [1, 2]}}
    assert {t.trial_timeout_s for t in expand(parse_study(raw))} == {90.0}
    with pytest.raises(Exception, match=r"resources.trial_timeout_s=0.0 is not allowed: must be > 0"):
        parse_study({**raw, "resources": {"trial_timeout_s": 0}})
    # The stall slack the same way: every trial's watchdog uses it; not a setting of the result.
    slack = {"name": "t", "resources": {"stall_slack_s": 5}, "sweep": {"num_workers": [1, 2]}}
    assert {t.stall_slack_s for t in expand(parse_study(slack))} == {5.0}
    assert {t.stall_slack_s for t in expand(parse_study(raw))} == {watchdog.STALL_SLACK_S}
    with pytest.raises(Exception, match=r"resources.stall_slack_s=-1.0 is not allowed: must be > 0"):
        parse_study({**raw, "resources": {"stall_slack_s": -1}})


# --- the hang watchdog -----------------------------------------------------------------------------------


def _rank(phase="measured steps", done=100, silent_s=0.5, stalled_s=0.5, step_s=0.05, host="node-a"):
    return {
        "phase": phase,
        "done": done,
        "silent_s": silent_s,
        "stalled_s": stalled_s,
        "step_s": step_s,
        "host": host,
        "actor": None,
    }


def test_a_stopped_rank_is_named_not_the_peer_waiting_for_it():
    # Rank 1 was stopped 25 s ago: no heartbeat since. Rank 0 still beats, blocked in the all-reduce.
    ranks = {0: _rank(stalled_s=25.0), 1: _rank(done=100, silent_s=25.0, stalled_s=25.0, host="node-b")}
    assert watchdog.hang_reason(ranks) == "rank 1 on node-b made no progress for 25 s in measured steps"


def test_a_rank_stuck_while_beating_is_named_when_it_is_furthest_behind():
    ranks = {0: _rank(done=101, stalled_s=30.0), 1: _rank(done=100, stalled_s=31.0, host="node-b")}
    assert watchdog.hang_reason(ranks) == "rank 1 on node-b made no progress for 31 s in measured steps"


def test_slow_steps_and_phases_without_steps_are_no_hang():
    limit = watchdog.stall_limit_s(2.0)
    assert limit == watchdog.STALL_SLACK_S + watchdog.STALL_STEPS * 2.0
    # A straggler's 2 s steps: waiting most of its limit for one is normal.
    assert watchdog.hang_reason({0: _rank(stalled_s=limit - 1, step_s=2.0)}) is None
    assert watchdog.hang_reason({0: _rank(stalled_s=limit + 1, step_s=2.0)}) is not None
    # Building, warming up or probing for long while beating: only the time limit covers it.
    for phase in ("build", "warm-up", "all-reduce probe"):
        assert watchdog.hang_reason({0: _rank(phase=phase, done=None, stalled_s=500.0)}) is None
    silent = _rank(phase="build", done=None, silent_s=watchdog.SILENT_S, stalled_s=watchdog.SILENT_S)
    assert watchdog.hang_reason({0: silent}) == "rank 0 on node-a made no progress for 30 s in build"
    # A trial's own slack moves the limit by as much.
    stalled = {0: _rank(stalled_s=limit - 1, step_s=2.0)}
    assert watchdog.hang_reason(stalled, slack_s=watchdog.STALL_SLACK_S - 2) is not None


def test_the_deadline_verdict_names_the_rank_furthest_behind():
    ranks = {0: _rank(phase="profile", done=None), 1: _rank(phase="time breakdown", done=None, host="node-b")}
    assert (
        watchdog.timeout_reason(60.0, ranks, 2) == "timed out after 60 s in time breakdown (rank 1 on node-b)"
    )
    # A rank that never sent a note is still starting up.
    assert (
        watchdog.timeout_reason(60.0, {0: ranks[0]}, 2)
        == "timed out after 60 s in start-up (rank 1 on an unknown host)"
    )


def test_the_board_times_steps_and_silence_on_its_own_clock(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(heartbeat.time, "monotonic", lambda: clock[0])
    board = ProgressBoard()

    def beat(at, phase, done, rank=0):
        clock[0] = at
        board.put("run", "w2-r0", rank, {"rank": rank, "phase": phase, "done": done, "steps": 10}, None)

    beat(100.0, "measured steps", 0)
    beat(101.0, "measured steps", 4)  # 4 steps in 1 s
    beat(102.0, "measured steps", 6)  # 2 steps in 1 s
    beat(103.0, "measured steps", 6)  # alive, no step
    clock[0] = 105.0
    (note,) = board.ranks("run").values()
    assert note["step_s"] == pytest.approx(0.25)  # the median of 4 x 0.25 s and 2 x 0.5 s
    assert (note["silent_s"], note["stalled_s"]) == (pytest.approx(2.0), pytest.approx(3.0))
    assert board.get("w2-r0")["done"] == 6 and board.trial("w2-r0") == board.ranks("run")
    board.forget("run")
    assert board.ranks("run") == {} and board.get("w2-r0") is None
    # A study stopped (Ctrl-C): every run's watchdog reads it with its ranks' notes, and ends its fit.
    assert board.watch("run")[2] is False
    board.stop()
    assert board.watch("run")[2] is True and board.watch("another run")[2] is True


def test_a_rank_past_its_deadline_raises_naming_the_phase_that_ran_out():
    channel = ProgressChannel(board=None, key="t", deadline=0.0, limit_s=42.0)
    beat = Heartbeat(channel, rank=1, send=lambda note: None)
    with pytest.raises(TrialTimeoutError) as info:
        beat.step(3)
    assert (info.value.limit_s, info.value.phase, info.value.rank) == (42.0, "start-up", 1)
    beat.channel = replace(channel, deadline=None)
    beat.phase("profile")
    beat.channel = channel
    with pytest.raises(TrialTimeoutError, match=r"42 s in profile \(rank 1 on "):
        beat.phase("all-reduce probe")


def test_a_skipped_phase_lasts_no_time_so_the_split_adds_up(monkeypatch):
    clock = PhaseClock(now=10.0)
    for name, at in (
        ("build", 11.0),
        ("warm-up", 12.0),
        ("measured steps", 13.0),
        ("all-reduce probe", 15.0),
    ):
        monkeypatch.setattr(phases.time, "time", lambda at=at: at)
        clock.enter(name)
    assert clock.current == "all-reduce probe"
    assert "teardown" not in clock.times()
    monkeypatch.setattr(phases.time, "time", lambda: 16.0)
    clock.enter("teardown")
    # One worker and no profile: the time breakdown and the profile begin when the probe begins; the
    # build began when the worker entered its function.
    assert clock.times() == {
        "build": 10.0,
        "warmup": 12.0,
        "measured": 13.0,
        "reference": 15.0,
        "profile": 15.0,
        "probe": 15.0,
        "teardown": 16.0,
    }


# --- storage ----------------------------------------------------------------------------------------------

ROW = {"study": "s", "trial_id": "w1-r0", "status": "ok", "num_workers": 1}
STEPS = [{"study": "s", "trial_id": "w1-r0", "world_rank": 0, "step": 0, "step_time_s": 0.1}]


def test_a_write_that_fails_briefly_is_retried(tmp_path, monkeypatch):
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) < 3:
            raise OSError("Connection reset by peer")
        return write_trial(*args)

    monkeypatch.setattr(safe_write, "write_trial", flaky)
    path, fallback = safe_write.store_trial(str(tmp_path), "s", ROW, STEPS, sleep=lambda s: None)
    assert (path, fallback, len(calls)) == (f"{tmp_path}/s/w1-r0.parquet", None, 3)


def test_an_unwritable_output_keeps_the_rows_in_the_fallback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path, fallback = safe_write.store_trial(
        str(blocker / "results"), "s", ROW, STEPS, fallback_root=str(tmp_path / "fb"), sleep=lambda s: None
    )
    assert path is None and fallback == f"{tmp_path}/fb/s/w1-r0.parquet"
    assert pd.read_parquet(tmp_path / "fb" / "s").trial_id.tolist() == ["w1-r0"]
    assert len(pd.read_parquet(tmp_path / "fb" / "s" / "_steps")) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and fallback in err and len(err.strip().splitlines()) == 1


def test_the_writability_check_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="is not writable") as info:
        safe_write.check_writable(str(tmp_path / "a-file" / "results"), "s")
    assert "\n" not in str(info.value)
    safe_write.check_writable(str(tmp_path / "ok"), "s")
    assert os.listdir(tmp_path / "ok" / "s") == []  # the probe is gone


def _two_trials(root: Path) -> None:
    for trial_id in ("w1-r0", "w2-r0"):
        write_trial(str(root), "s", {**ROW, "trial_id": trial_id}, [{**STEPS[0], "trial_id": trial_id}])


@pytest.mark.parametrize("broken", ["s/w2-r0.parquet", "s/_steps/w2-r0.parquet"])
def test_a_corrupt_file_is_set_aside_by_the_resume_scan_and_its_trial_runs_again(tmp_path, capsys, broken):
    _two_trials(tmp_path)
    (tmp_path / broken).write_bytes((tmp_path / broken).read_bytes()[:40])  # a truncated write
    assert {k: row["status"] for k, row in existing_trials(str(tmp_path), "s").items()} == {"w1-r0": "ok"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2  # the unreadable file, then its companion
    assert err[0].startswith(f"tinyfold-ray: result file {tmp_path / broken} is unreadable (")
    assert f": set aside as {tmp_path / broken.rsplit('/', 1)[0]}/_corrupt/" in err[0]
    assert not (tmp_path / "s" / "w2-r0.parquet").exists()
    assert not (tmp_path / "s" / "_steps" / "w2-r0.parquet").exists()
    assert len(list((tmp_path / "s" / "_corrupt").iterdir())) >= 1
    assert pd.read_parquet(tmp_path / "s").trial_id.tolist() == ["w1-r0"]  # pandas skips _corrupt/


def test_the_loader_skips_a_corrupt_file_in_one_line(tmp_path, capsys):
    _two_trials(tmp_path)
    (tmp_path / "s" / "w2-r0.parquet").write_bytes(b"PAR1 garbage")
    assert load_results(tmp_path / "s").trial_id.tolist() == ["w1-r0"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "w2-r0.parquet" in err[0] and "Traceback" not in err[0]


# --- one driver per study output -------------------------------------------------------------------------


def test_a_second_driver_is_refused_naming_the_first(tmp_path):
    with study_lock(str(tmp_path), "s"):
        with pytest.raises(StudyLockedError) as info:
            with study_lock(str(tmp_path), "s"):
                pass
    message = str(info.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}, started " in message
    with study_lock(str(tmp_path), "s"):  # released at the end of the block
        pass


def test_a_lock_file_left_by_a_dead_driver_is_no_obstacle(tmp_path):
    # The kernel released the dead driver's OS lock; its note is left behind and decides nothing.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    left = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-01-01T00:00:00+00:00"}
    (tmp_path / ".s.lock").write_text(json.dumps(left))
    said = []
    with study_lock(str(tmp_path), "s", say=said.append):
        assert json.loads((tmp_path / ".s.lock").read_text())["pid"] == os.getpid()
    assert said == []  # nothing to take over, so nothing to say
    assert (tmp_path / ".s.lock").read_text() == ""  # no note naming a driver that is gone


def test_the_study_cli_refuses_a_second_driver_at_once(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nsweep: {num_workers: [1]}\n")
    with study_lock(str(tmp_path / "out"), "s"):
        proc = subprocess.run(
            [sys.executable, "-m", "tinyfold_ray.study", str(study), "--output", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2
    assert (
        f"another driver is running this study on this output (host {socket.gethostname()}, pid {os.getpid()}"
        in (proc.stderr)
    )
    assert "Traceback" not in proc.stderr and "study s:" not in proc.stdout  # refused before Ray started


def test_the_study_cli_refuses_an_unwritable_output_in_one_line(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nsweep: {num_workers: [1]}\n")
    (tmp_path / "a-file").write_text("x")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyfold_ray.study",
            str(study),
            "--output",
            str(tmp_path / "a-file" / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- trials running together -----------------------------------------------------------------------------


def test_concurrent_trials_must_fit_together():
    nodes = [{"CPU": 3.0}]
    w1 = TrialSpec(num_workers=1, device="cpu")
    w2 = TrialSpec(num_workers=2, device="cpu")
    assert trials_fit_together([w1, w1], nodes, driver_cpus=0.01)
    assert not trials_fit_together([w2, w2], nodes, driver_cpus=0.01)
    # Two nodes of 2 GPU-like slots: two 2-slot trials fit side by side, three do not.
    gpu_nodes = [{"CPU": 4.0, "MOCK_GPU": 2.0}, {"CPU": 4.0, "MOCK_GPU": 2.0}]
    mock = TrialSpec(num_workers=2, device="cpu", resources_per_worker={"MOCK_GPU": 1.0})
    assert trials_fit_together([mock, mock], gpu_nodes, 0.01)
    assert not trials_fit_together([mock, mock, mock], gpu_nodes, 0.01)
