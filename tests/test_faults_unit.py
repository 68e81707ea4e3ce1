"""Faults that need no Ray cluster: failure reasons from structured errors, the default time limit,
storage retries and the fallback, corrupt result files, the study lock, concurrent placement."""

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
from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

from tests.ray_helpers import SHORT_TRAINING, SMALL_MODEL
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.errors import StorageError, TrainingError, TrialTimeoutError
from tinyfold_ray.results import load_results, safe_write
from tinyfold_ray.results.writer import existing_trials, write_trial
from tinyfold_ray.study.lock import StudyLockedError, study_lock
from tinyfold_ray.train import faults
from tinyfold_ray.train.resources import trials_fit_together

NOTES = {
    0: {"phase": "measured steps", "host": "node-a", "node_id": "n0", "device": "cuda:0"},
    1: {"phase": "measured steps", "host": "node-b", "node_id": "n1", "device": "cuda:1"},
}


def _group_error(failures: dict) -> WorkerGroupError:
    return WorkerGroupError(error_message="Training failed due to worker errors:", worker_failures=failures)


def _dead_worker() -> WorkerHealthCheckFailedError:
    return WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError())


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
