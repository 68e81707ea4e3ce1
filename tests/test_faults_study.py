"""Faults injected into whole studies run as a user runs them (the study CLI, called in this process as
`python -m tinyfold_ray.study` calls it, on the session's shared embedded Ray): a hung worker, an output
that fails mid-study (a corrupt result file: test_shared_group.py). Each runs a few trials of the tiny
study model."""

from __future__ import annotations

import re
import shutil
import signal
import socket
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.ray_helpers import Injector, process_gone, run_cli
from tests.test_study_run import write_study
from tinyfold_ray.results.safe_write import FALLBACK_ENV
from tinyfold_ray.study import runner
from tinyfold_ray.study.cli import main as study_main


@pytest.fixture
def study_board(monkeypatch) -> Callable[[], Any]:
    """The progress board of the study the test runs (its trials' ranks and watchdogs use it): a
    callable giving it, or None before the study opened it."""
    boards = []
    real_open_board = runner.open_board

    def open_board():
        boards.append(real_open_board())
        return boards[-1]

    monkeypatch.setattr(runner, "open_board", open_board)
    return lambda: boards[0] if boards else None


def test_a_hung_worker_ends_as_a_failed_row_and_the_next_trial_runs(
    tmp_path, capsys, study_board, ray_cluster
):
    # A slack shorter than the default 20 s; the stopped rank is still the one named, as its heartbeat
    # has been silent for over watchdog.LATE_S by then.
    slack = 8
    path = write_study(tmp_path, "hang", {"num_workers": [2, 1]}, stall_slack_s=slack)
    study = yaml.safe_load(path.read_text())
    # Enough steps (a few ms each) that the 2-worker trial is still stepping when it is stopped; the
    # 1-worker trial runs them all, after it: this seed's run order (--dry-run) puts w2-r0 first.
    study["train"]["num_steps"], study["order_seed"] = 800, 1
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "results"
    stopper = Injector("w2-r0", rank=1, sig=signal.SIGSTOP, board=study_board)
    stopper.start()  # stuck: neither computes nor answers
    code, printed, err = run_cli("tinyfold_ray.study", study_main, [str(path), "--output", str(out)], capsys)
    stopper.done.set()
    assert stopper.at is not None, printed[-3000:] + err[-3000:]
    assert code == 1, printed[-3000:] + err[-3000:]
    failed, after = [line for line in printed.splitlines() if re.match(r"\[\d/2\] ", line)]
    assert failed.startswith("[1/2] w2-r0 ") and after.startswith("[2/2] w1-r0 ") and after.endswith(" ok")
    assert "1 trial(s) failed: w2-r0" in printed
    # The stopped rank is named (not its peer, waiting for it in the all-reduce), and for how long.
    prefix = f"FAILED: rank 1 on {socket.gethostname()} made no progress for "
    idle = re.search(re.escape(prefix) + r"(\d+) s in measured steps", failed)
    assert idle and slack <= int(idle.group(1)) < slack + 10, failed
    assert process_gone(stopper.note["pid"])  # the stopped process was killed, not left behind
    trials = pd.read_parquet(out / "hang").set_index("trial_id")
    assert sorted(trials.index) == ["w1-r0", "w2-r0"]  # nothing lost, nothing twice
    assert trials.loc["w2-r0", "status"] == "failed" and trials.loc["w1-r0", "status"] == "ok"
    ended_after = trials.loc["w2-r0", "end_time"].timestamp() - stopper.at_wall
    print(f"hung worker in a study: its row ended {ended_after:.1f} s after the stop: {failed.strip()}")
    assert ended_after < slack + 20
    assert trials.loc["w2-r0", "wall_time_s"] < 120 + slack


def test_an_output_that_fails_mid_study_keeps_the_rows_in_the_fallback(
    tmp_path, monkeypatch, capsys, study_board, ray_cluster
):
    # The fallback location is set in this process only, after the shared Ray started: the trial
    # drivers (Ray's processes) write there because the study passes it on, not by inheriting it.
    path = write_study(tmp_path, "lostout", {"num_workers": [1]})
    out, fallback = tmp_path / "results", tmp_path / "fallback"
    monkeypatch.setenv(FALLBACK_ENV, str(fallback))

    def take_the_output_away(note: dict) -> None:
        # Once the trial runs (the study's up-front check found the output writable), the storage goes
        # away: the study folder becomes a file, so nothing can be written under it.
        shutil.rmtree(out / "lostout", ignore_errors=True)
        (out / "lostout").write_text("gone")

    saboteur = Injector("w1-r0", rank=0, phase=None, steps=0, board=study_board, act=take_the_output_away)
    saboteur.start()
    code, output, err = run_cli("tinyfold_ray.study", study_main, [str(path), "--output", str(out)], capsys)
    saboteur.done.set()
    assert saboteur.at is not None, output[-3000:] + err[-3000:]
    assert code == 3, output[-3000:] + err[-3000:]
    trial_file = fallback / "lostout" / "w1-r0.parquet"
    assert f"rows kept in the fallback file {trial_file}" in output
    assert output.strip().splitlines()[-1].startswith("1 trial(s) could not be written")
    assert "Traceback" not in output + err
    assert pd.read_parquet(trial_file).status.tolist() == ["ok"]
    assert len(pd.read_parquet(fallback / "lostout" / "_steps")) == 3
