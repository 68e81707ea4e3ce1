"""A straggler, end to end on CPU workers: one rank computes slower, and the results name that rank.

Under DDP the fast rank waits for the slow one inside backward, so both ranks' step times are equal and
the wait looks like an exposed all-reduce; only each rank's own compute reference tells them apart.
"""

import socket
import time

import pytest
import ray.train
import torch

from tests.ray_helpers import SMALL_MODEL, embedded_ray
from tinyfold_ray.config import DDP_WARMUP_STEPS, TrainConfig, TrialSpec
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.results.scaling_model import add_predictions
from tinyfold_ray.train.trial import run_trial
from tinyfold_ray.train.worker import train_worker

SLOW_RANK = 1
# Several times a forward + backward of SMALL_MODEL at batch 2 on one thread (about 20 ms here), so the
# slow rank's compute is about twice the other's whatever the machine's noise.
DELAY_S = 0.15


class Sleepy(torch.nn.Module):
    """The model behind a fixed wait before every forward: a rank on a slower device."""

    def __init__(self, model: torch.nn.Module, delay_s: float):
        super().__init__()
        self.model, self.delay_s = model, delay_s

    def forward(self, *inputs):
        time.sleep(self.delay_s)
        return self.model(*inputs)


def slow_rank_worker(config):
    """The trial's own worker function; on SLOW_RANK its model sleeps before each forward."""
    slow = ray.train.get_context().get_world_rank() == SLOW_RANK
    return train_worker(config, wrap_model=(lambda model: Sleepy(model, DELAY_S)) if slow else None)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    with embedded_ray(num_cpus=3):
        yield


def test_a_slow_rank_is_named_as_a_straggler_not_as_an_exposed_all_reduce(tmp_path):
    train = TrainConfig(batch_size=2, num_steps=6, warmup_steps=DDP_WARMUP_STEPS, num_threads=1)
    spec = TrialSpec(study="straggler", trial_id="w2", num_workers=2, model=SMALL_MODEL, train=train)
    outcome = run_trial(spec, str(tmp_path), train_fn=slow_rank_worker)
    assert outcome.ok, outcome.row["error"]

    row = outcome.row
    assert row["load_imbalance"] > 1.1, row["load_imbalance"]
    assert (row["slowest_rank"], row["slowest_rank_host"]) == (SLOW_RANK, socket.gethostname())
    assert row["replica_divergence"] == 0.0  # slow, not diverged

    summary = summarize(load_results(tmp_path))
    assert len(summary) == 1
    note = summary["note"].iloc[0]
    assert f"straggler: rank {SLOW_RANK} (" in note, note
    dominant = add_predictions(summary)["dominant_loss"].iloc[0]
    assert dominant.startswith(f"straggler rank {SLOW_RANK} ("), dominant
    assert "all-reduce" not in dominant
