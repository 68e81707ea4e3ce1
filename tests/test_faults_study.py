"""Faults injected into whole studies run as a user runs them (`python -m tinyfold_ray.study`): a hung
worker, a corrupt result file. Slow: each runs several real trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_study_run import study_cmd, write_study
from tinyfold_ray.train import faults

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> list[int]:
    """Processes below `pid` (the study's own embedded Ray: never anybody else's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _train_workers(pid: int) -> list[int]:
    workers = []
    for child in _descendants(pid):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            pass
    return sorted(workers)


def test_a_hung_worker_ends_as_a_failed_row_and_the_study_goes_on(tmp_path):
    limit = 150  # generous: on a loaded 2-core box a healthy 1-worker trial took 84 s
    path = write_study(tmp_path, "hang", {"num_workers": [2, 1]})
    study = path.read_text().replace("resources:", f"resources:\n  trial_timeout_s: {limit}")
    path.write_text(study.replace("num_steps: 3", "num_steps: 200"))
    out = tmp_path / "results"
    proc = subprocess.Popen(
        study_cmd(path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_train_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _train_workers(proc.pid)
        assert len(workers) == 2, "the 2-worker trial never started"
        time.sleep(2)
        os.kill(workers[-1], signal.SIGSTOP)  # stuck: neither computes nor answers
        stopped_at = time.monotonic()
        output, _ = proc.communicate(timeout=limit + 240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, output[-3000:]
    assert f"FAILED: timed out after {limit} s in " in output
    trials = pd.read_parquet(out / "hang").set_index("trial_id")
    assert sorted(trials.index) == ["w1-r0", "w2-r0"]  # nothing lost, nothing twice
    assert trials.loc["w2-r0", "status"] == "failed" and trials.loc["w1-r0", "status"] == "ok"
    # Frozen while its worker group starts, the trial is stopped by the backstop, after its grace.
    assert trials.loc["w2-r0", "wall_time_s"] < limit + faults.BACKSTOP_GRACE_S + 30
    assert time.monotonic() - stopped_at < limit + faults.BACKSTOP_GRACE_S + 200


def test_a_corrupt_result_file_is_set_aside_and_its_trial_runs_again(tmp_path):
    path = write_study(tmp_path, "corrupt", {"num_workers": [1]}, repeats=2)
    out = tmp_path / "results"
    first = subprocess.run(study_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    bad = out / "corrupt" / "w1-r1.parquet"
    bad.write_bytes(bad.read_bytes()[:100])  # a partial file, as a crashed copy leaves it

    summary = subprocess.run(
        [sys.executable, "-m", "tinyfold_ray.summary", str(out / "corrupt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert summary.returncode == 0 and "Traceback" not in summary.stderr
    assert f"skipping unreadable result file {bad}" in summary.stderr

    again = subprocess.run(study_cmd(path, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    (line,) = [
        line for line in again.stderr.splitlines() if line.startswith(f"tinyfold-ray: result file {bad} ")
    ]
    assert "is unreadable" in line and "set aside" in line
    assert "resuming: 1 finished trial(s) kept and skipped" in again.stdout
    trials = pd.read_parquet(out / "corrupt")
    assert sorted(trials.trial_id) == ["w1-r0", "w1-r1"] and set(trials.status) == {"ok"}
    assert len(list((out / "corrupt" / "_corrupt").iterdir())) == 1


def test_an_output_that_fails_mid_study_keeps_the_rows_in_the_fallback(tmp_path):
    path = write_study(tmp_path, "lostout", {"num_workers": [1]}, repeats=2)
    out, fallback = tmp_path / "results", tmp_path / "fallback"
    proc = subprocess.Popen(
        study_cmd(path, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TINYFOLD_FALLBACK_DIR": str(fallback)},
    )
    first = out / "lostout" / "w1-r0.parquet"
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert first.exists()
    # The storage goes away: the study folder becomes a file, so nothing can be written under it.
    kept = tmp_path / "kept"
    (out / "lostout").rename(kept)
    (out / "lostout").write_text("gone")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, output[-3000:]
    trial_file = fallback / "lostout" / "w1-r1.parquet"
    assert f"rows kept in the fallback file {trial_file}" in output
    assert output.strip().splitlines()[-1].startswith("1 trial(s) could not be written")
    assert "Traceback" not in output
    assert pd.read_parquet(trial_file).status.tolist() == ["ok"]
    assert len(pd.read_parquet(fallback / "lostout" / "_steps")) == 3
