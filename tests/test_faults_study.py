"""Faults injected into a whole study run as a user runs it (the study CLI, called in this process as
`python -m tinyfold_ray.study` calls it, on the session's shared embedded Ray): a hung worker, then an
output that fails mid-study (a corrupt result file: test_shared_group.py), in two trials of the tiny
study model."""

from __future__ import annotations

import re
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


def test_a_hung_worker_then_an_output_that_fails_lose_no_row_and_the_study_goes_on(
    tmp_path, monkeypatch, capsys, study_board, ray_cluster
):
    # Two faults in one study (one Tune run): a rank of the first trial hangs; once the second runs,
    # the output goes away. A slack shorter than the default 20 s; the stopped rank is still the one
    # named, as its heartbeat has been silent for over watchdog.LATE_S by then.
    slack = 8
    path = write_study(tmp_path, "hang", {"num_workers": [2, 1]}, stall_slack_s=slack)
    study = yaml.safe_load(path.read_text())
    # Enough steps (a few ms each) that the 2-worker trial is still stepping when it is stopped; the
    # 1-worker trial runs them all, after it: this seed's run order (--dry-run) puts w2-r0 first.
    study["train"]["num_steps"], study["order_seed"] = 800, 1
    path.write_text(yaml.safe_dump(study))
    out, fallback, moved = tmp_path / "results", tmp_path / "fallback", tmp_path / "moved"
    # The fallback location is set in this process only, after the shared Ray started: the trial
    # drivers (Ray's processes) write there because the study passes it on, not by inheriting it.
    monkeypatch.setenv(FALLBACK_ENV, str(fallback))

    def take_the_output_away(note: dict) -> None:
        # Once the second trial runs (the study's up-front check found the output writable), the
        # storage goes away: the study folder, with the first trial's row, is moved elsewhere (as a
        # mount that vanished) and a file takes its place, so nothing can be written under it.
        (out / "hang").rename(moved)
        (out / "hang").write_text("gone")

    stopper = Injector("w2-r0", rank=1, sig=signal.SIGSTOP, board=study_board)
    saboteur = Injector("w1-r0", rank=0, phase=None, steps=0, board=study_board, act=take_the_output_away)
    stopper.start()  # stuck: neither computes nor answers
    saboteur.start()
    code, printed, err = run_cli("tinyfold_ray.study", study_main, [str(path), "--output", str(out)], capsys)
    stopper.done.set()
    saboteur.done.set()
    said = printed[-3000:] + err[-3000:]
    assert stopper.at is not None and saboteur.at is not None, said
    # Rows outside the output matter most: exit status 3, and their line is the last one.
    assert code == 3, said
    assert "Traceback" not in printed + err
    # The second trial's line that its rows went to the fallback comes before its result's.
    trial_file = fallback / "hang" / "w1-r0.parquet"
    failed, kept, after = [line for line in printed.splitlines() if re.match(r"\[\d/2\] ", line)]
    assert failed.startswith("[1/2] w2-r0 ") and after.startswith("[2/2] w1-r0 ") and after.endswith(" ok")
    assert kept.startswith("[2/2] w1-r0 ") and kept.endswith(f"rows kept in the fallback file {trial_file}")
    assert "1 trial(s) failed: w2-r0" in printed
    assert printed.strip().splitlines()[-1].startswith("1 trial(s) could not be written")
    # Nothing lost, nothing twice: each trial's row is in one place.
    rows = [*moved.glob("*.parquet"), *trial_file.parent.glob("*.parquet")]
    assert sorted(row.stem for row in rows) == ["w1-r0", "w2-r0"]

    # The hang: the stopped rank is named (not its peer, waiting for it in the all-reduce), and for
    # how long; the stopped process was killed, not left behind.
    prefix = f"FAILED: rank 1 on {socket.gethostname()} made no progress for "
    idle = re.search(re.escape(prefix) + r"(\d+) s in measured steps", failed)
    assert idle and slack <= int(idle.group(1)) < slack + 10, failed
    assert process_gone(stopper.note["pid"])
    hung = pd.read_parquet(moved / "w2-r0.parquet").iloc[0]
    assert (hung.trial_id, hung.status) == ("w2-r0", "failed")
    ended_after = hung.end_time.timestamp() - stopper.at_wall
    print(f"hung worker in a study: its row ended {ended_after:.1f} s after the stop: {failed.strip()}")
    assert ended_after < slack + 20
    assert hung.wall_time_s < 120 + slack

    # The output that failed: the next trial ran to its end, its rows in the fallback, whole.
    ran = pd.read_parquet(trial_file)
    assert (ran.trial_id.tolist(), ran.status.tolist()) == (["w1-r0"], ["ok"])
    assert len(pd.read_parquet(fallback / "hang" / "_steps")) == 800
