"""A simulated two-node cluster on one host (ray.cluster_utils.Cluster), GPU-style scheduling via a
custom resource that each node has two of: a request it cannot hold, and, last, where a trial's workers
ran and what they record, then a node lost mid-trial (a failed row naming the node, in bounded time; the
next trial runs on what is left, or fails up front). The cluster starts after an embedded Ray
(ray_session.connect) ran and stopped in this process, as in a whole test run, or a user's script that
runs a study and then joins a cluster."""

import socket
import threading
import time
from dataclasses import replace

import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster

from tests.ray_helpers import (
    SHARED_RAY_STARTS,
    SHORT_TRAINING,
    SMALL_MODEL,
    start_shared_ray,
    stop_shared_ray,
)
from tinyfold_ray.config import TrainConfig, TrialSpec
from tinyfold_ray.ray_session import embedded_runtime_env
from tinyfold_ray.train.heartbeat import open_board, process_board
from tinyfold_ray.train.trial import run_trial, run_trials

ENDLESS = TrainConfig(batch_size=2, num_steps=1_000_000, warmup_steps=2)


@pytest.fixture(scope="module")
def own_cluster():
    # In a whole test run the shared embedded Ray ran before this module; alone, it runs here first.
    if not SHARED_RAY_STARTS:
        start_shared_ray()
    stop_shared_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "resources": {"MOCK_GPU": 2}})
    cluster.environ_around_connect = SHARED_RAY_STARTS[-1]
    # The node the last test removes.
    cluster.doomed = cluster.add_node(num_cpus=2, resources={"MOCK_GPU": 2})
    # As the embedded cluster of a study is set up (ray_session.connect).
    ray.init(address=cluster.address, log_to_driver=False, runtime_env=embedded_runtime_env())
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_the_embedded_ray_leaves_the_environment_and_a_cluster_started_after_it_runs_actors(own_cluster):
    before, after = own_cluster.environ_around_connect
    assert after == before  # connect() set nothing in this process but Ray's process-wide settings
    # connect() took Ray's authentication mode back out of the environment: the next cluster this
    # process started ran without it while this process still authenticated, and its first actor
    # died "before it started running".
    assert ray.get(open_board().get.remote("any trial"), timeout=60) is None


def test_more_mock_gpus_than_the_cluster_has_fails_without_waiting(own_cluster, tmp_path):
    spec = TrialSpec(
        study="multi", trial_id="w6", num_workers=6, resources_per_worker={"MOCK_GPU": 1}, model=SMALL_MODEL
    )
    outcome = run_trial(spec, str(tmp_path))
    assert not outcome.ok and "MOCK_GPU: 4" in outcome.row["error"]


def _remove_when_working(cluster, node, key: str, trial_id: str, removed: dict) -> None:
    """Remove `node` once its worker reached the measured steps of trial `trial_id` of the worker group
    `key` (its heartbeat, on the board this process's trials report to, says so)."""
    board = process_board()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for rank, note in ray.get(board.trial.remote(key)).items():
            working = note["phase"] == "measured steps" and note.get("trial") == trial_id
            if note.get("node_id") == node.node_id and working:
                removed["rank"], removed["at"] = rank, time.monotonic()
                cluster.remove_node(node)
                return
        time.sleep(0.1)


# Last in this file: it removes a node of the module's cluster.
def test_trials_on_two_nodes_record_them_and_a_lost_node_is_a_failed_row(own_cluster, tmp_path):
    cluster, doomed = own_cluster, own_cluster.doomed
    # One worker on each node (STRICT_SPREAD), for two trials in the same workers (a shared worker
    # group, one Ray Train start-up): the first runs to its end, the node goes while the second runs.
    spread = TrialSpec(
        study="lost",
        trial_id="w2",
        num_workers=2,
        placement_strategy="STRICT_SPREAD",
        resources_per_worker={"MOCK_GPU": 1},
        worker_group="shared",
        model=SMALL_MODEL,
        train=SHORT_TRAINING,
    )
    endless = replace(spread, trial_id="w2-endless", train=ENDLESS)
    removed: dict = {}
    threading.Thread(
        target=_remove_when_working,
        args=(cluster, doomed, spread.trial_id, endless.trial_id, removed),
        daemon=True,
    ).start()
    first, outcome = run_trials([spread, endless], str(tmp_path))

    # The first trial: where its workers ran, in its row and in each rank's steps.
    assert first.ok, first.row["error"]
    assert (first.row["num_nodes"], first.row["workers_per_node"]) == (2, 1)
    steps = pd.read_parquet(tmp_path / "lost" / "_steps")
    ranks = steps[steps.trial_id == spread.trial_id].drop_duplicates("world_rank")
    assert sorted(ranks.groupby("node_id").world_rank.count()) == [1, 1]
    assert doomed.node_id in set(ranks.node_id)  # Ray's node ids
    # Ray keys local ranks by IP, which simulated nodes share: they stay distinct, but do not restart.
    assert ranks.local_rank.nunique() == 2

    # The second: the node lost mid-trial.
    assert "at" in removed, outcome.row["error"]
    took = time.monotonic() - removed["at"]
    print(f"node lost: row {took:.1f} s after the removal: {outcome.row['error']}")
    host = socket.gethostname()
    assert outcome.row["error"].startswith(f"node {host} lost (rank {removed['rank']} on {host})"), (
        outcome.row
    )
    assert took < 60, took

    # What is left: the head. A one-worker trial runs there; the two-node one is refused at once,
    # without waiting for a placement that can never happen.
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
