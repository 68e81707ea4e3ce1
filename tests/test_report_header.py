"""The report's header: what the results ran on, taken from the trials table (no browser needed here;
tests/test_report.py renders the whole report in Chromium)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.test_summary import frame, repeats, trial, write_study
from tinyfold_ray.results.report import ran_on
from tinyfold_ray.results.schema import SUMMARY_DIR
from tinyfold_ray.summary import main


def _at(hour: int, minute: int, day: int = 1) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=timezone.utc)


def test_header_names_machines_devices_software_period_and_commits():
    rows = repeats([10, 11], num_workers=1, start_time=_at(9, 30), end_time=_at(9, 31))
    rows += repeats(
        [19, 20], num_workers=2, hostnames="node0,node1", start_time=_at(12, 0), end_time=_at(12, 5)
    )
    lines = dict(ran_on(frame(rows)))
    assert lines == {
        "trials": "4 (4 ok)",
        # several values: each with its number of trials, most common first
        "machines": "node0 (4 trials), node1 (2 trials)",
        "devices": "NVIDIA H100 80GB HBM3",
        "GPUs per node": "8",
        "backend": "cuda",
        "collectives": "nccl 2.27.3",
        "torch": "2.13.0",
        "Ray": "2.60.0",
        "Python": "3.11.7",
        "CUDA": "12.8",
        "ran": "2026-01-01 09:30 to 12:05 UTC",
        "git commit": "abc1234",
    }
    assert [what for what, _ in ran_on(frame(rows))][:3] == ["trials", "machines", "devices"]


def test_header_lists_every_value_when_results_ran_on_several():
    rows = repeats([10, 11], num_workers=1, git_commit="abc1234", torch_version="2.13.0")
    rows += [
        trial(num_workers=2, git_commit="def5678-dirty", torch_version="2.12.1", end_time=_at(8, 0, day=3))
    ]
    rows += [trial(num_workers=4, status="failed", hostnames=None, device_name=None)]
    lines = dict(ran_on(frame(rows)))
    assert lines["trials"] == "4 (3 ok, 1 failed)"
    assert lines["git commit"] == "abc1234 (3 trials), def5678-dirty (1 trial)"
    assert lines["torch"] == "2.13.0 (3 trials), 2.12.1 (1 trial)"
    assert lines["devices"] == "NVIDIA H100 80GB HBM3"  # the failed trial recorded no device: not a value
    assert lines["ran"] == "2026-01-01 12:00 to 2026-01-03 08:00 UTC"  # days apart: both dates


def test_header_leaves_out_what_a_cpu_run_did_not_record():
    cpu = dict(
        backend="cpu",
        comm_backend="gloo",
        comm_library_version=None,
        device_name="cpu",
        num_gpus=0,
        node_gpus=0,
        cuda_version=None,
        git_commit=None,
        env_vars='{"GLOO_SOCKET_IFNAME": "eth0"}',
    )
    lines = dict(ran_on(frame(repeats([5, 6], num_workers=2, **cpu))))
    assert "GPUs per node" not in lines and "CUDA" not in lines and "HIP" not in lines
    assert lines["collectives"] == "gloo"  # no NCCL/RCCL version on gloo
    assert lines["git commit"] == "not recorded"  # its absence is worth saying
    assert lines["env vars"] == '{"GLOO_SOCKET_IFNAME": "eth0"}'


def test_header_describes_the_latest_attempt_of_each_trial():
    rows = [trial(trial_id="t", attempt=1, hostnames="old-node"), trial(trial_id="t", attempt=2)]
    lines = dict(ran_on(frame(rows)))
    assert lines["trials"] == "1 (1 ok)" and lines["machines"] == "node0"


def test_cli_report_opens_with_the_header(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rows = repeats([10, 12, 11], num_workers=1, hostnames="gpu-a") + repeats([19, 21], num_workers=2)
    write_study(tmp_path, rows)
    assert main([str(tmp_path / "s"), "--html"]) == 0
    capsys.readouterr()
    text = (tmp_path / "s" / SUMMARY_DIR / "report.html").read_text()
    header = text[text.index("<h2>Ran on</h2>") : text.index("</table>")]
    assert "<th>machines</th><td>gpu-a (3 trials), node0 (2 trials)</td>" in header
    assert "<th>collectives</th><td>nccl 2.27.3</td>" in header
    assert "<th>git commit</th><td>abc1234</td>" in header
    assert text.index("Ran on") < text.index("<h2>s (weak scaling")  # before the tables
