"""`ray job submit` end to end on loopback (issue 6), with Ray's token authentication on.

A Ray head started the way an operator starts one (`ray start --head --block`, RAY_AUTH_MODE=token,
a token file written here, dashboard and job server on 127.0.0.1), its own ports and its own
--temp-dir, so clusters of tests running beside it on the same machine are never touched (no
`ray stop`). The tiny CPU study goes in with `ray job submit --working-dir`, as cluster/README.md
documents it; its results come back as Parquet through pandas. A client without the token (or with
a wrong one) is refused. Every address this test connects to is 127.0.0.1.

Marked `cluster`: a head of its own with the job server, which the tests' shared embedded Ray does not
run; not in the default run (`python -m pytest -m cluster`; CI runs them after it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.ray_helpers import TINY_STUDY_MODEL

pytestmark = pytest.mark.cluster

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30  # for `ray start --block` to drain (3 s, see start_head) and stop its processes
CLIENT_TIMEOUT_S = 60  # a refused submit
JOB_TIMEOUT_S = 300  # the study itself: one 2-worker trial of a tiny model, ~30 s on a busy 2-core box
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

STUDY = {
    "name": "job-smoke",
    "description": "tests/test_job_submit.py: the smallest study, submitted as a Ray job",
    "scaling": "weak",
    "repeats": 1,
    "resources": {"device": "cpu", "cpus_per_worker": 1},
    "model": TINY_STUDY_MODEL,
    "train": {"num_steps": 3, "warmup_steps": 2},
    "sweep": {"num_workers": [2]},  # one trial: its gloo group spans two worker processes
}


def ray_cli() -> list[str]:
    """The `ray` command of this Python (not whichever `ray` comes first on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ray")
    assert found, "the `ray` command is missing; pip install -e '.[test]'"
    return [found]


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free on the loopback address right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(text: str, chars: int = 4000) -> str:
    """The end of a log, without the colour codes of Ray's CLI."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text if len(text) <= chars else "...\n" + text[-chars:]


def client_env(token_path: Path | None, home: Path) -> dict[str, str]:
    """The environment of a `ray` client: with the token (as the README says), or with none at all.

    HOME points at an empty folder, so that no token file in the real HOME takes part (a local
    `ray.init()` writes ~/.ray/auth_token; a client reads it when RAY_AUTH_MODE=token and no other
    token is given).
    """
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
    env["HOME"] = str(home)
    if token_path is not None:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return env


# --- processes: stop exactly the cluster this test started ---------------------------------------


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every living process below `root` -> its start time (workers run in process groups of their own)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
            started[int(entry)] = st[2]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in started and pid not in found:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def still_running(pid: int, start_time: str) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z" and st[2] == start_time


def stop_head(proc: subprocess.Popen) -> list[int]:
    """SIGTERM the head's `ray start --block` (it drains the node and stops what it started), then
    SIGKILL its process group and every process that was below it. Returns the pids that had to be
    killed."""
    below = descendants(proc.pid)
    if proc.poll() is None:
        # Only the leader: a SIGTERM to the whole group also stops the GCS at once, and the leader then
        # waits 30 s for the GCS it wants to drain the node through.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is ours: start_new_session=True
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)
    killed = []
    deadline = time.monotonic() + 10
    for pid, start_time in below.items():
        if still_running(pid, start_time):
            killed.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        while still_running(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.1)
    return killed


# --- the cluster -----------------------------------------------------------------------------------


@dataclass
class Head:
    proc: subprocess.Popen
    dashboard_url: str
    token_path: Path
    temp_dir: Path
    log_path: Path

    def log(self) -> str:
        return tail(self.log_path.read_text(errors="replace"))

    def get(self, path: str, token: str | None) -> tuple[int, str]:
        """HTTP GET against the job server; (status, body)."""
        request = urllib.request.Request(self.dashboard_url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()


def start_head(token_path: Path) -> Head:
    # Ray's Unix sockets live under --temp-dir, whose path must stay short (~107 characters in all).
    temp_dir = Path(tempfile.mkdtemp(prefix="tfr-", dir="/tmp"))
    log_path = temp_dir / "ray-start.log"
    gcs, dashboard, client, agent = free_ports(4)
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
        # On SIGTERM `ray start --block` drains its node for up to 30 s; the actors Ray Train leaves
        # behind keep it busy that long. A throwaway cluster needs no graceful drain.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="3",
        # Ray's state API (Ray Train's placement-group cleaner asks it whether a controller lives) finds
        # the dashboard through RAY_ADDRESS, which actors lack, or else /tmp/ray/ray_current_cluster:
        # with our own --temp-dir that file names another (or a dead) cluster on this machine.
        RAY_API_SERVER_ADDRESS=f"http://{LOOPBACK}:{dashboard}",
    )
    cmd = [
        *ray_cli(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={gcs}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        "--min-worker-port=0",  # workers on ports the OS picks, never the shared default range
        "--max-worker-port=0",
        "--num-cpus=3",
        "--num-gpus=0",
        "--object-store-memory=100000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    head = Head(proc, f"http://{LOOPBACK}:{dashboard}", token_path, temp_dir, log_path)

    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            status, body = head.get("/api/version", head.token)
            if status == 200:
                return head
            last = f"HTTP {status}: {body[:200]}"
        except (OSError, urllib.error.URLError) as e:
            last = repr(e)
        time.sleep(0.5)
    stop_head(proc)
    message = (
        f"the Ray head exited with code {proc.returncode}"
        if proc.returncode not in (None, -signal.SIGTERM, -signal.SIGKILL)
        else f"the job server at {head.dashboard_url} did not answer within {START_TIMEOUT_S} s ({last})"
    )
    log_text = head.log()
    shutil.rmtree(temp_dir, ignore_errors=True)
    pytest.fail(f"{message}\n`{' '.join(cmd)}` said:\n{log_text}")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Iterator[Head]:
    auth = tmp_path_factory.mktemp("auth")
    token_path = auth / "token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # 256 random bits, as `ray get-auth-token --generate`
    cluster = start_head(token_path)
    try:
        yield cluster
    finally:
        stop_head(cluster.proc)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def working_dir(tmp_path_factory) -> Path:
    """What `--working-dir` uploads: the study file only (the package is installed on the 'cluster')."""
    wd = tmp_path_factory.mktemp("job-working-dir")
    (wd / "study.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return wd


def submit(
    head: Head,
    working_dir: Path,
    env: dict[str, str],
    submission_id: str,
    entrypoint: list[str],
    timeout_s: float,
):
    cmd = [
        *ray_cli(),
        "job",
        "submit",
        "--address",
        head.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        str(working_dir),
        "--",
        *entrypoint,
    ]
    try:
        return subprocess.run(
            cmd, env=env, cwd=working_dir, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as e:
        out = "".join(
            x.decode(errors="replace") if isinstance(x, bytes) else x for x in (e.stdout, e.stderr) if x
        )
        pytest.fail(f"`ray job submit` did not finish within {timeout_s} s; its output:\n{tail(out)}")


# --- the tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["none", "wrong"])
def test_a_submit_without_the_clusters_token_is_refused(head, working_dir, tmp_path, token):
    home = tmp_path / "home"
    home.mkdir()
    if token == "wrong":
        wrong = tmp_path / "wrong-token"
        wrong.write_text(secrets.token_hex(32))
        env = client_env(wrong, home)
    else:
        env = client_env(None, home)
    submission_id = f"refused-{token}-{secrets.token_hex(4)}"
    result = submit(head, working_dir, env, submission_id, ["python", "-c", "print('ran')"], CLIENT_TIMEOUT_S)
    said = tail(result.stdout + result.stderr)
    assert result.returncode != 0, f"a submit with {token} token was accepted:\n{said}"
    assert re.search(r"authentication|unauthorized|401", said, flags=re.I), (
        f"refused, not for the token:\n{said}"
    )
    assert not (home / ".ray" / "auth_token").exists(), "the client created a token of its own"
    # Nothing ran: the job server knows no such job.
    status, body = head.get(f"/api/jobs/{submission_id}", head.token)
    assert status == 404, f"the refused job exists on the cluster (HTTP {status}): {body[:500]}"
    # And the job server itself refuses an anonymous request.
    assert head.get("/api/jobs/", None)[0] == 401


def test_the_study_runs_as_a_ray_job_and_its_parquet_reads_with_pandas(head, working_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    results = tmp_path / "results"  # absolute: the driver runs in a temporary copy of the working dir
    submission_id = f"study-{secrets.token_hex(4)}"
    entrypoint = [sys.executable, "-m", "tinyfold_ray.study", "study.yaml", "--output", str(results)]

    result = submit(
        head, working_dir, client_env(head.token_path, home), submission_id, entrypoint, JOB_TIMEOUT_S
    )

    said = tail(result.stdout + result.stderr, chars=1_000_000)
    status, body = head.get(f"/api/jobs/{submission_id}/logs", head.token)
    log = json.loads(body).get("logs", "") if status == 200 else f"(no job log: HTTP {status} {body[:300]})"
    context = f"`ray job submit` said:\n{tail(said)}\n\nthe job's log:\n{tail(log)}"
    assert result.returncode == 0, f"`ray job submit` exited with {result.returncode}\n{context}"
    assert f"Job '{submission_id}' succeeded" in said, context

    status, body = head.get(f"/api/jobs/{submission_id}", head.token)
    assert status == 200 and json.loads(body)["status"] == "SUCCEEDED", (
        f"HTTP {status}: {body[:500]}\n{context}"
    )

    # The driver joined this cluster (RAY_ADDRESS set by the job supervisor), not an embedded Ray.
    assert "trial(s) to run on Ray cluster at" in log, context
    progress = re.findall(r"^\[(\d+)/1\] .*samples/s.*$", log, flags=re.M)
    assert progress == ["1"], f"expected one progress line for the trial\n{context}"

    rows = pd.read_parquet(results / STUDY["name"])
    shown = rows[["trial_id", "num_workers", "status", "error"]].to_string()
    assert len(rows) == 1, f"{len(rows)} rows:\n{shown}\n{context}"
    assert rows.num_workers.tolist() == [2], shown
    assert (rows.status == "ok").all(), shown
    assert (rows.throughput_samples_per_sec > 0).all()
