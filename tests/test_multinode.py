"""A simulated two-node cluster on one host (ray.cluster_utils.Cluster), GPU-style scheduling via a
custom resource that each node has two of."""

import pandas as pd
import pytest
import ray
from ray.cluster_utils import Cluster

from tests.ray_helpers import SHORT_TRAINING, SMALL_MODEL
from tinyfold_ray.config import TrialSpec
from tinyfold_ray.ray_session import embedded_runtime_env
from tinyfold_ray.train.trial import run_trial


@pytest.fixture(scope="module")
def own_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "resources": {"MOCK_GPU": 2}})
    cluster.add_node(num_cpus=2, resources={"MOCK_GPU": 2})
    # As the embedded cluster of a study is set up (ray_session.connect).
    ray.init(address=cluster.address, log_to_driver=False, runtime_env=embedded_runtime_env())
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_spread_trial_records_two_nodes_by_ray_node_id(own_cluster, tmp_path):
    spec = TrialSpec(
        study="multi",
        trial_id="w4",
        num_workers=4,
        placement_strategy="SPREAD",
        resources_per_worker={"MOCK_GPU": 1},
        model=SMALL_MODEL,
        train=SHORT_TRAINING,
    )
    outcome = run_trial(spec, str(tmp_path))
    assert outcome.ok, outcome.row["error"]
    assert (outcome.row["num_nodes"], outcome.row["workers_per_node"]) == (2, 2)

    steps = pd.read_parquet(tmp_path / "multi" / "_steps")
    per_node = steps.drop_duplicates("world_rank").groupby("node_id").world_rank.count()
    assert sorted(per_node) == [2, 2]
    # Ray keys local ranks by IP, which simulated nodes share: they stay distinct, but do not restart.
    ranks = steps.drop_duplicates("world_rank")
    assert ranks.local_rank.nunique() == 4


def test_more_mock_gpus_than_the_cluster_has_fails_without_waiting(own_cluster, tmp_path):
    spec = TrialSpec(
        study="multi", trial_id="w6", num_workers=6, resources_per_worker={"MOCK_GPU": 1}, model=SMALL_MODEL
    )
    outcome = run_trial(spec, str(tmp_path))
    assert not outcome.ok and "MOCK_GPU: 4" in outcome.row["error"]
