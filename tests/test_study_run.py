"""End-to-end studies on CPU workers: Parquet out, resume after a hard kill, a failing trial."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL


def write_study(tmp_path: Path, name: str, sweep: dict, repeats: int = 1) -> Path:
    study = {
        "name": name,
        "repeats": repeats,
        "resources": {"device": "cpu", "cpus_per_worker": 1},
        "model": TINY_STUDY_MODEL,
        "train": {"num_steps": 3, "warmup_steps": 2},
        "sweep": sweep,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def study_cmd(path: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "tinyfold_ray.study", str(path), "--output", str(output)]


def test_study_runs_resumes_after_a_kill_and_keeps_every_trial_once(tmp_path):
    path = write_study(tmp_path, "e2e", {"num_workers": [1, 2], "batch_per_worker": [2]}, repeats=2)
    out = tmp_path / "results"
    first = out / "e2e" / "w1-b2-r0.parquet"

    # Start the study and kill it hard (driver and its embedded Ray) once the first trial is written.
    proc = subprocess.Popen(
        study_cmd(path, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[0].decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = pd.read_parquet(first).end_time.iloc[0]
    done_before = set(pd.read_parquet(out / "e2e").trial_id)
    assert "w1-b2-r0" in done_before and len(done_before) < 4

    rerun = subprocess.run(study_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming: {len(done_before)} finished trial(s) kept and skipped" in rerun.stdout
    for trial_id in done_before:
        assert trial_id not in rerun.stdout.split("resuming")[1].split("results:")[0]
    assert "speedup" in rerun.stdout and "efficiency" in rerun.stdout  # the closing table

    trials = pd.read_parquet(out / "e2e")
    assert sorted(trials.trial_id) == ["w1-b2-r0", "w1-b2-r1", "w2-b2-r0", "w2-b2-r1"]
    assert set(trials.status) == {"ok"}
    assert trials.groupby("num_workers").size().to_dict() == {1: 2, 2: 2}
    assert pd.read_parquet(first).end_time.iloc[0] == kept  # the finished trial was not rewritten
    steps = pd.read_parquet(out / "e2e" / "_steps")
    assert len(steps) == 3 * (1 + 2) * 2

    # The summary CLI on these real results writes every file, and the plots open.
    summary = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyfold_ray.summary",
            str(out / "e2e"),
            "--plot",
            "--html",
            "--predict",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert summary.returncode == 0, summary.stderr
    assert "predicted" in summary.stdout
    written = out / "e2e" / "_summary"
    for name in (
        "summary.parquet",
        "summary.csv",
        "summary.md",
        "throughput.png",
        "speedup.png",
        "efficiency.png",
        "breakdown.png",
        "report.html",
    ):
        assert (written / name).stat().st_size > 0, name
    import matplotlib.image

    assert matplotlib.image.imread(written / "speedup.png").ndim == 3
    summary_rows = pd.read_parquet(written / "summary.parquet").set_index("num_workers")
    assert len(summary_rows) == 3  # 1 and 2 workers, and 4 predicted
    # Explained: interval, breakdown, sanity and the dominant loss on the measured 2-worker point.
    two = summary_rows.loc[2]
    assert two.speedup_ci95 > 0 and two.efficiency_ci95 == pytest.approx(two.speedup_ci95 / 2)
    assert two.comm_exposed_median_s > 0 and two.compute_time_median_s > 0
    assert isinstance(two.sanity, str) and "% of step" in two.dominant_loss
    assert steps[["compute_time_s", "comm_exposed_s", "optimizer_time_s"]].notna().all().all()
    assert trials.achieved_tflops.gt(0).all()
    assert sorted(pd.read_parquet(out / "e2e").trial_id) == sorted(
        trials.trial_id
    )  # summary not read as trials


def test_a_failing_trial_is_marked_and_the_others_finish(tmp_path):
    # A learning rate of 1e6 drives the loss to inf/nan: that trial fails, the study goes on.
    path = write_study(tmp_path, "fails", {"num_workers": [1], "learning_rate": [1e6, 1e-3]})
    out = tmp_path / "results"
    proc = subprocess.run(study_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED: TrainingError: loss became" in proc.stdout
    assert "1 trial(s) failed: w1-learning_rate_1000000.0-r0" in proc.stdout
    trials = pd.read_parquet(out / "fails").set_index("trial_id")
    assert trials.loc["w1-learning_rate_1000000.0-r0", "status"] == "failed"
    assert "loss became" in trials.loc["w1-learning_rate_1000000.0-r0", "error"]
    assert trials.loc["w1-learning_rate_0.001-r0", "status"] == "ok"


def test_a_study_that_cannot_fit_the_cluster_is_refused_before_the_first_trial(tmp_path):
    path = write_study(tmp_path, "huge", {"num_workers": [1, 64]})
    out = tmp_path / "results"
    start = time.monotonic()
    proc = subprocess.run(study_cmd(path, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "trial w64-r0: 64 workers x {CPU: 1} do not fit this cluster" in proc.stderr
    assert not (out / "huge").exists()  # nothing ran
    assert time.monotonic() - start < 60


def test_ctrl_c_stops_cleanly_and_keeps_finished_trials(tmp_path):
    path = write_study(tmp_path, "sigint", {"num_workers": [1]}, repeats=3)
    out = tmp_path / "results"
    first = out / "sigint" / "w1-r0.parquet"
    proc = subprocess.Popen(study_cmd(path, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "run the same command again to resume" in output
    assert "Tuner.restore" not in output  # Tune's own advice would mislead
    assert pd.read_parquet(out / "sigint").status.eq("ok").all()


def test_relative_output_lands_under_the_current_directory_and_resumes(tmp_path):
    # As the quick start runs: relative study path, the study's own relative `output: results`.
    write_study(tmp_path, "rel", {"num_workers": [1, 2]})
    cmd = [sys.executable, "-m", "tinyfold_ray.study", "rel.yaml"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    study_dir = tmp_path / "results" / "rel"
    assert sorted(p.name for p in study_dir.glob("*.parquet")) == ["w1-r0.parquet", "w2-r0.parquet"]
    assert f"results: {study_dir}" in first.stdout  # the printed location is the absolute one
    assert "speedup" in first.stdout and "no summary" not in first.stderr

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming: 2 finished trial(s) kept and skipped" in again.stdout
    assert "trial(s) to run" not in again.stdout
    assert "speedup" in again.stdout

    # One Ray Train trial without Tune: its relative --output is the caller's directory too.
    train = subprocess.run(
        [sys.executable, "-m", "tinyfold_ray.train", "--workers", "1", "--output", "adhoc-out"]
        + ["--seq-len", "8", "--num-seqs", "3", "--msa-dim", "8", "--pair-dim", "8", "--num-blocks", "1"]
        + ["--batch-size", "2", "--num-steps", "2", "--warmup-steps", "1", "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert len(list((tmp_path / "adhoc-out" / "adhoc").glob("*.parquet"))) == 1
