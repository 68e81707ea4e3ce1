"""A node lost mid-trial, on a simulated two-node cluster (ray.cluster_utils.Cluster): a failed row
naming the node, in bounded time; the next trial runs on what is left, or fails up front."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.ray_helpers import SHORT_TRAINING, SMALL_MODEL
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.ray_session import embedded_runtime_env
from tinyfold_ray.train.heartbeat import process_board
from tinyfold_ray.train.trial import run_trial

ENDLESS = TrainConfig(batch_size=2, num_steps=1_000_000, warmup_steps=2)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "resources": {"MOCK_GPU": 1}})
    doomed = cluster.add_node(num_cpus=2, resources={"MOCK_GPU": 1})
    # As the embedded cluster of a study is set up (ray_session.connect).
    ray.init(address=cluster.address, log_to_driver=False, runtime_env=embedded_runtime_env())
    yield cluster, doomed
    ray.shutdown()
    cluster.shutdown()


def _remove_when_working(cluster, node, key: str, removed: dict) -> None:
    """Remove `node` once a worker of trial `key` on it reached its measured steps (its heartbeat, on
    the board this process's trials report to, says so)."""
    board = process_board()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for rank, note in ray.get(board.trial.remote(key)).items():
            if note.get("node_id") == node.node_id and note["phase"] == "measured steps":
                removed["rank"], removed["at"] = rank, time.monotonic()
                cluster.remove_node(node)
                return
        time.sleep(0.1)


def test_a_lost_node_is_a_failed_row_and_the_next_trial_runs_on_what_is_left(cluster, tmp_path):
    cluster, doomed = cluster
    # One worker on each node: STRICT_SPREAD, one MOCK_GPU per node.
    spread = TrialSpec(
        study="lost",
        trial_id="w2",
        num_workers=2,
        placement_strategy="STRICT_SPREAD",
        resources_per_worker={"MOCK_GPU": 1},
        model=SMALL_MODEL,
        train=ENDLESS,
    )
    removed: dict = {}
    threading.Thread(
        target=_remove_when_working, args=(cluster, doomed, spread.trial_id, removed), daemon=True
    ).start()
    outcome = run_trial(spread, str(tmp_path))
    assert "at" in removed, outcome.row["error"]
    took = time.monotonic() - removed["at"]
    print(f"node lost: row {took:.1f} s after the removal: {outcome.row['error']}")
    host = socket.gethostname()
    assert outcome.row["error"].startswith(f"node {host} lost (rank {removed['rank']} on {host})"), (
        outcome.row
    )
    assert took < 60, took

    # What is left: the head with one MOCK_GPU. A one-worker trial runs there; the two-node one is
    # refused at once, without waiting for a placement that can never happen.
    one = TrialSpec(
        study="lost",
        trial_id="w1",
        resources_per_worker={"MOCK_GPU": 1},
        model=SMALL_MODEL,
        train=SHORT_TRAINING,
    )
    assert run_trial(one, str(tmp_path)).ok
    start = time.monotonic()
    again = run_trial(spread, None)
    assert "need 2 distinct nodes" in again.row["error"] and time.monotonic() - start < 10
