"""End-to-end studies on CPU workers: Parquet out, Ctrl-C and resume, the train CLI (a failing trial in a
study: test_faults_study.py).

Only the study that is interrupted runs as a process of its own (with its embedded Ray, as the quick
start runs); the rest call the CLIs in this process, as `python -m` would, and join the session's shared
embedded Ray."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pandas as pd
import yaml

import tinyfold_ray
from tests.ray_helpers import TINY_STUDY_MODEL, environ_but_ray_process_env, run_cli
from tinyfold_ray.study.cli import main as study_main
from tinyfold_ray.summary import main as summary_main
from tinyfold_ray.train.cli import main as train_main

# The measured steps of the interrupted study's trials (a few ms each).
STEPS = 300


def write_study(tmp_path: Path, name: str, sweep: dict, repeats: int = 1, **resources) -> Path:
    study = {
        "name": name,
        "repeats": repeats,
        "resources": {"device": "cpu", "cpus_per_worker": 1, **resources},
        "model": TINY_STUDY_MODEL,
        "train": {"num_steps": 3, "warmup_steps": 2},
        "sweep": sweep,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def same_package_env() -> dict[str, str]:
    """This environment, with the tinyfold_ray this process imported first on a subprocess's path
    (from another directory, `python -m` would find whichever copy is installed)."""
    package_root = str(Path(tinyfold_ray.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }


def study(argv: list[str], capture) -> tuple[int, str, str]:
    return run_cli("tinyfold_ray.study", study_main, argv, capture)


def test_a_study_stopped_by_ctrl_c_resumes_keeping_every_finished_trial_once(
    tmp_path, monkeypatch, capsys, ray_cluster
):
    # As the quick start runs: a relative study path and the study's own relative `output: results`.
    path = write_study(tmp_path, "e2e", {"num_workers": [1, 2], "batch_per_worker": [2]})
    # Enough measured steps (a few ms each) that a trial outlasts the heartbeat interval below.
    path.write_text(path.read_text().replace("num_steps: 3", f"num_steps: {STEPS}"))
    study_dir = tmp_path / "results" / "e2e"

    # The study as a process of its own, with its embedded Ray; Ctrl-C once its second trial's workers
    # run (its heartbeat is past "starting its workers"): the first trial's row is written by then.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyfold_ray.study", "e2e.yaml", "--progress-every", "0.5"],
        cwd=tmp_path,
        env=same_package_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, first = [], []
    for line in proc.stdout:
        lines.append(line)
        if re.match(r"  \[2/2\] \S+: (?!starting)", line):
            first = sorted(study_dir.glob("*.parquet"))
            proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C
            break
    stopped = time.monotonic()
    said = "".join(lines) + proc.communicate(timeout=120)[0]
    stop_took = time.monotonic() - stopped
    assert proc.returncode == 130, said[-3000:]
    assert len(first) == 1, said[-3000:]
    first = first[0]
    # The running trial's driver ends its fit at once: its watchdog ends its workers (no wait for Ray
    # Tune's 10 s, then a kill).
    assert stop_took < 10, said[-3000:]
    assert "run the same command again to resume" in said
    assert "Tuner.restore" not in said  # Tune's own advice would mislead
    # Each trial's row is on disk as the trial ends (seen above, before the signal): a study killed
    # outright (kill -9, a lost node) keeps it as well.
    kept = pd.read_parquet(first).end_time.iloc[0]
    assert set(pd.read_parquet(study_dir).trial_id) == {first.stem}

    # While it ran: heartbeat lines of the running trial, and the time left after the first trial.
    beats = re.findall(rf"^  \[1/2\] {first.stem}: measured steps (\d+)/{STEPS}, \d+ s$", said, re.M)
    assert beats and all(int(done) <= STEPS for done in beats), said[-3000:]
    (finished,) = [line for line in said.splitlines() if line.startswith(f"[1/2] {first.stem} ")]
    assert re.search(r"  ok; about \d+ s left$", finished), finished
    # The embedded cluster's start: its size explained, Ray's token-authentication advice not shown.
    assert "embedded Ray with " in said and "logical CPUs (this machine's " in said
    assert "Token authentication" not in said and "RAY_AUTH_MODE" not in said

    # The same command again, from the same directory: the finished trials are kept, the rest run.
    monkeypatch.chdir(tmp_path)
    code, out, err = study(["e2e.yaml"], capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "resuming: 1 finished trial(s) kept and skipped" in out
    assert first.stem not in out.split("resuming")[1].split("results:")[0]
    assert f"results: {study_dir}" in out  # the printed location is the absolute one
    assert "speedup" in out and "efficiency" in out and "no summary" not in err  # the closing table

    trials = pd.read_parquet(study_dir)
    assert sorted(trials.trial_id) == ["w1-b2-r0", "w2-b2-r0"]
    assert set(trials.status) == {"ok"}
    assert pd.read_parquet(first).end_time.iloc[0] == kept  # the finished trial was not rewritten
    steps = pd.read_parquet(study_dir / "_steps")
    assert len(steps) == STEPS * (1 + 2)

    # Once more: everything is done, nothing runs, the table is printed again.
    code, out, err = study(["e2e.yaml"], capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "resuming: 2 finished trial(s) kept and skipped" in out
    assert "trial(s) to run" not in out and "speedup" in out

    # The summary CLI on these real results writes every file, and the plots open.
    code, out, err = run_cli(
        "tinyfold_ray.summary", summary_main, [str(study_dir), "--plot", "--html", "--predict", "4"], capsys
    )
    assert code == 0, err
    assert "predicted" in out
    written = study_dir / "_summary"
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
    assert matplotlib.image.imread(written / "speedup.png").ndim == 3
    summary_rows = pd.read_parquet(written / "summary.parquet").set_index("num_workers")
    assert len(summary_rows) == 3  # 1 and 2 workers, and 4 predicted
    # Explained: breakdown, sanity and the dominant loss on the measured 2-worker point (the interval
    # over repeats: test_summary.py).
    two = summary_rows.loc[2]
    # The exposed all-reduce may be 0 on a loaded machine (test_trial.py), never missing or negative.
    assert two.speedup > 0 and two.comm_exposed_median_s >= 0 and two.compute_time_median_s > 0
    assert isinstance(two.sanity, str) and "% of step" in two.dominant_loss
    assert steps[["compute_time_s", "comm_exposed_s", "optimizer_time_s"]].notna().all().all()
    assert trials.achieved_tflops.gt(0).all()
    assert sorted(pd.read_parquet(study_dir).trial_id) == sorted(
        trials.trial_id
    )  # summary not read as trials
    print(f"Ctrl-C: the study process exited {stop_took:.1f} s after SIGINT")


def test_the_train_cli_runs_one_ray_train_trial_into_a_relative_output_leaving_nothing_else(
    tmp_path, monkeypatch, capsys, ray_cluster, home
):
    # One Ray Train trial without Tune: its relative --output is the caller's directory too. Nothing
    # else stays: the environment as it was, nothing in the home directory (the `home` fixture).
    monkeypatch.chdir(tmp_path)
    before = environ_but_ray_process_env()
    argv = ["--workers", "1", "--output", "adhoc-out"]
    argv += ["--seq-len", "8", "--num-seqs", "3", "--msa-dim", "8", "--pair-dim", "8", "--num-blocks", "1"]
    argv += ["--batch-size", "2", "--num-steps", "2", "--warmup-steps", "1", "--device", "cpu"]
    code, out, err = run_cli("tinyfold_ray.train", train_main, argv, capsys)
    assert code == 0, out[-3000:] + err[-3000:]
    assert "samples/s" in out
    [written] = (tmp_path / "adhoc-out" / "adhoc").glob("*.parquet")
    assert f"wrote {written}" in err
    assert environ_but_ray_process_env() == before
