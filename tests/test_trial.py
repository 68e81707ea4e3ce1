"""One trial on Ray Train with CPU workers (gloo): its row and steps, DDP itself, a straggler, what the
workers see of the driver's environment and of Train's settings, what the trial leaves in this process
(nothing), a request that cannot be placed (a worker that raises, a killed or hung one, a trial past its
limit: test_faults.py and test_faults_study.py)."""

import functools
import json
import os
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch

from tests.ray_helpers import SHORT_TRAINING, SMALL_MODEL, environ_but_ray_process_env, start_shared_ray
from tinyfold_ray.config import DDP_WARMUP_STEPS, DDPConfig, TrainConfig, TrialSpec
from tinyfold_ray.flops import train_flops_per_sample
from tinyfold_ray.ray_session import EMBEDDED_TRAIN_ENV
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.results.scaling_model import add_predictions
from tinyfold_ray.results.schema import PHASE_COLUMNS, STEP_COLUMNS, TRIAL_COLUMNS
from tinyfold_ray.train import faults
from tinyfold_ray.train.trial import START_TIMEOUT_ENV, TRAIN_ENV, TrialOutcome, run_trial

pytestmark = pytest.mark.usefixtures("ray_cluster")  # the session's shared embedded Ray

SLOW_RANK = 1
# Several times a forward + backward of SMALL_MODEL at batch 2 on one thread (about 20 ms here), so the
# slow rank's compute is about twice the other's whatever the machine's noise.
DELAY_S = 0.15
STRAGGLER_TRAINING = TrainConfig(batch_size=2, num_steps=6, warmup_steps=DDP_WARMUP_STEPS, num_threads=1)


# Read by every rank of the two-rank fit below: the driver's collective variables, the study's env, and
# what Train's controller runs with (the ranks inherit the controller's environment).
CONTROLLER_SETTINGS = (*TRAIN_ENV, START_TIMEOUT_ENV, *EMBEDDED_TRAIN_ENV)
ENV_PROBE = ("NCCL_SOCKET_IFNAME", "TF_STUDY_ONLY", "CUDA_VISIBLE_DEVICES", *CONTROLLER_SETTINGS)
USERS_INTERVAL = "0.7"  # the user's own RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (the default is TRAIN_ENV's)
# The DDP probe's own training: a learning rate large enough that one step moves the parameters.
PROBE_TRAINING = TrainConfig(batch_size=2, num_steps=1, warmup_steps=0, learning_rate=1e-2, num_threads=1)


def _ddp_probe(ddp: DDPConfig) -> list[dict]:
    """Each rank trains a model of its own on its slice of shared batches, in the trial's process group;
    returns every rank's losses, flattened parameters and the ENV_PROBE variables it sees."""
    import ray.train
    import torch
    import torch.distributed as dist

    from tinyfold_ray.data import make_batch
    from tinyfold_ray.train.step import build_training
    from tinyfold_ray.train.worker import ddp_wrapper

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    b, cpu = PROBE_TRAINING.batch_size, torch.device("cpu")
    training = build_training(SMALL_MODEL, PROBE_TRAINING, cpu, rank=rank, wrap_model=ddp_wrapper(ddp, cpu))
    generator = torch.Generator().manual_seed(123)
    losses = []
    for _ in range(3):
        full = make_batch(SMALL_MODEL, b * world, generator, cpu)
        losses.append(float(training.step(tuple(t[rank * b : (rank + 1) * b] for t in full))))
    params = torch.cat([p.detach().flatten() for p in training.model.parameters()])
    env = {name: os.environ.get(name) for name in ENV_PROBE}
    everyone = [None] * world
    dist.all_gather_object(everyone, {"losses": losses, "params": params.tolist(), "env": env})
    return everyone


def test_ddp_averages_gradients_like_one_worker_with_the_whole_batch(two_rank_trial):
    from tinyfold_ray.data import make_batch
    from tinyfold_ray.train.step import build_training

    two = two_rank_trial.probe
    # Reference without Ray or DDP: one process, the whole batch of 4.
    cpu = torch.device("cpu")
    train = replace(PROBE_TRAINING, batch_size=4)
    single = build_training(SMALL_MODEL, train, cpu)
    generator = torch.Generator().manual_seed(123)
    single_losses = [float(single.step(make_batch(SMALL_MODEL, 4, generator, cpu))) for _ in range(3)]
    single_params = torch.cat([p.detach().flatten() for p in single.model.parameters()])

    # The global loss is the mean of the two ranks' losses over equal halves.
    averaged = [(a + b) / 2 for a, b in zip(two[0]["losses"], two[1]["losses"])]
    params = [torch.tensor(rank["params"]) for rank in two]
    assert averaged == pytest.approx(single_losses, rel=1e-5)
    torch.testing.assert_close(params[0], single_params, rtol=1e-4, atol=1e-6)
    # And the parameters are identical on every rank after training.
    assert torch.equal(params[0], params[1])
    # The update really moved them (the comparison is not between two untouched inits).
    torch.manual_seed(train.seed)
    from tinyfold_ray.model import TinyFold

    init = torch.cat([p.detach().flatten() for p in TinyFold(SMALL_MODEL).parameters()])
    assert not torch.allclose(init, single_params)


class Sleepy(torch.nn.Module):
    """The model behind a fixed wait before every forward: a rank on a slower device."""

    def __init__(self, model: torch.nn.Module, delay_s: float):
        super().__init__()
        self.model, self.delay_s = model, delay_s

    def forward(self, *inputs):
        time.sleep(self.delay_s)
        return self.model(*inputs)


def probed_slow_rank_worker(probe_path: str, config):
    """The trial's own worker function, on SLOW_RANK with a model that sleeps before each forward;
    before it, in the same process group, every rank answers _ddp_probe, which rank 0 writes to
    `probe_path` (one fit serves both: each costs seconds of Ray Train start-up)."""
    import ray.train

    from tinyfold_ray.train.worker import train_worker

    answers = _ddp_probe(config["spec"].ddp)
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        Path(probe_path).write_text(json.dumps(answers))
    slow = rank == SLOW_RANK
    return train_worker(config, wrap_model=(lambda model: Sleepy(model, DELAY_S)) if slow else None)


TWO_RANKS = TrialSpec(
    study="unit",
    trial_id="w2",
    num_workers=2,
    model=SMALL_MODEL,
    train=STRAGGLER_TRAINING,
    env={"GLOO_SOCKET_IFNAME": "lo", "TF_STUDY_ONLY": "yes"},
    profile=True,
    start_timeout_s=41.0,
)


class TwoRankTrial(NamedTuple):
    outcome: TrialOutcome
    out: Path  # the output root
    probe: list[dict]  # every rank's _ddp_probe answer
    environ: tuple[dict, dict]  # this process's environment (less Ray's own) before and after the trial


@pytest.fixture(scope="module")
def two_rank_trial(tmp_path_factory) -> TwoRankTrial:
    """One profiled 2-rank trial whose rank SLOW_RANK computes slower, its ranks probed first."""
    start_shared_ray()  # set up before the tests' own `ray_cluster`
    out = tmp_path_factory.mktemp("trial")
    probe_path = out / "probe.json"
    with pytest.MonkeyPatch.context() as mp:
        # Set after Ray started, so a worker can only have them through the trainer's runtime environment.
        mp.setenv("NCCL_DEBUG", "WARN")
        mp.setenv("NCCL_SOCKET_IFNAME", "tf-test0")
        mp.setenv("CUDA_VISIBLE_DEVICES", "7")
        mp.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", USERS_INTERVAL)
        before = environ_but_ray_process_env()
        worker = functools.partial(probed_slow_rank_worker, str(probe_path))
        outcome = run_trial(TWO_RANKS, str(out), git_commit="abc123", train_fn=worker)
        after = environ_but_ray_process_env()
    assert outcome.ok, outcome.row["error"]
    return TwoRankTrial(outcome, out, json.loads(probe_path.read_text()), (before, after))


def test_trial_writes_parquet_that_pandas_reads_with_the_documented_columns(two_rank_trial):
    outcome, out, *_ = two_rank_trial
    assert outcome.ok, outcome.row["error"]

    trials = pd.read_parquet(out / "unit")
    assert list(trials.columns) == list(TRIAL_COLUMNS)
    row = trials.iloc[0]
    assert (row.status, row.num_workers, row.num_nodes, row.workers_per_node) == ("ok", 2, 1, 2)
    assert (row.backend, row.comm_backend, row.global_batch, row.num_gpus) == ("cpu", "gloo", 4, 0)
    assert row.throughput_samples_per_sec == pytest.approx(4 / row.step_time_median_s)
    assert row.git_commit == "abc123" and row.torch_version == torch.__version__
    assert pd.isna(row.peak_memory_bytes)  # CPU: unknown, never 0
    assert row.overhead_s > 0 and row.allreduce_time_s > 0
    # Where the wall time went: every phase took time, and the phases add up to the wall time.
    phases = row[[*PHASE_COLUMNS, "reference_s", "probe_s"]]
    assert (phases > 0).all(), phases
    assert row[list(PHASE_COLUMNS)].sum() == pytest.approx(row.wall_time_s, rel=0.05)
    # The driver's collective variables and the study's env; not the device visibility.
    assert json.loads(row.env_vars) == {
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_DEBUG": "WARN",
        "NCCL_SOCKET_IFNAME": "tf-test0",
        "TF_STUDY_ONLY": "yes",
    }
    for col in ("num_workers", "steps", "repeat"):
        assert trials[col].dtype == "int64"
    for col in ("throughput_samples_per_sec", "step_time_p95_s", "final_loss"):
        assert trials[col].dtype == "float64"

    steps = pd.read_parquet(out / "unit" / "_steps")
    assert list(steps.columns) == list(STEP_COLUMNS)
    assert len(steps) == 2 * STRAGGLER_TRAINING.num_steps
    assert sorted(steps.world_rank.unique()) == [0, 1]
    assert steps.peak_memory_bytes.isna().all()  # per rank; CPU has no such counter
    # The trial's median step is the median over steps of the slowest rank.
    slowest = steps.groupby("step").step_time_s.max()
    assert row.step_time_median_s == pytest.approx(slowest.median())

    # Where each step's time went, per rank and step; the parts fit inside the step's own time.
    parts = steps[["compute_time_s", "comm_exposed_s", "optimizer_time_s"]]
    assert parts.notna().all().all() and (parts >= 0).all().all()
    assert (parts.sum(axis=1) <= steps.step_time_s * 1.001).all()
    assert (steps.compute_time_s > 0).all()
    # Compute is capped at the rank's own no-sync reference; the rest of forward+backward is exposed
    # all-reduce (which may be 0 on a loaded machine, where the reference itself ran slowly).
    assert (steps.compute_time_s <= steps.compute_reference_s).all()
    assert row.compute_time_median_s == pytest.approx(steps.compute_time_s.median())
    by_step = steps.pivot(index="step", columns="world_rank", values="step_time_s")
    assert row.rank_skew_median_s == pytest.approx((by_step.max(axis=1) - by_step.min(axis=1)).median())
    assert 0 <= row.loss_rank_spread < 1
    # Each rank's own compute reference, one value per rank; with two ranks, the slowest over the other.
    references = steps.groupby("world_rank").compute_reference_s.agg(["nunique", "first"])
    assert (references["nunique"] == 1).all() and (references["first"] > 0).all()
    assert row.load_imbalance == pytest.approx(references["first"].max() / references["first"].min())
    assert row.slowest_rank == references["first"].idxmax() and row.slowest_rank_host == socket.gethostname()
    assert row.replica_divergence == 0.0  # DDP keeps the replicas' parameters identical (slow, not diverged)
    assert row.allreduce_latency_s >= 0 and row.allreduce_s_per_byte >= 0
    assert pd.isna(row.comm_library_version) and row.node_gpus == 0  # gloo on CPU workers
    assert row.flops_per_sample == train_flops_per_sample(SMALL_MODEL)
    assert row.achieved_tflops == pytest.approx(row.flops_per_sample * row.throughput_samples_per_sec / 1e12)
    assert pd.isna(row.mfu)  # no peak is known for a CPU

    # profile: true left one Chrome trace per rank next to the results.
    traces = sorted(Path(row.profile_path).glob("rank*.json"))
    assert [t.name for t in traces] == ["rank0.json", "rank1.json"]
    assert all(json.loads(t.read_text())["traceEvents"] for t in traces)


def test_a_slow_rank_is_named_as_a_straggler_not_as_an_exposed_all_reduce(two_rank_trial):
    # Under DDP the fast rank waits for the slow one inside backward, so both ranks' step times are equal
    # and the wait looks like an exposed all-reduce; only each rank's own compute reference tells them
    # apart.
    outcome, out, *_ = two_rank_trial
    assert outcome.ok, outcome.row["error"]
    row = outcome.row
    assert row["load_imbalance"] > 1.1, row["load_imbalance"]
    assert (row["slowest_rank"], row["slowest_rank_host"]) == (SLOW_RANK, socket.gethostname())

    summary = summarize(load_results(out))
    assert len(summary) == 1
    note = summary["note"].iloc[0]
    assert f"straggler: rank {SLOW_RANK} (" in note, note
    dominant = add_predictions(summary)["dominant_loss"].iloc[0]
    assert dominant.startswith(f"straggler rank {SLOW_RANK} ("), dominant
    assert "all-reduce" not in dominant


def test_an_impossible_resource_request_fails_at_once_with_the_reason(tmp_path):
    start = time.monotonic()
    too_many = TrialSpec(
        study="unit", trial_id="huge", num_workers=64, model=SMALL_MODEL, train=SHORT_TRAINING
    )
    gpus = TrialSpec(study="unit", trial_id="gpu", num_workers=2, device="cuda", model=SMALL_MODEL)
    first, second = run_trial(too_many, str(tmp_path)), run_trial(gpus, str(tmp_path))
    assert time.monotonic() - start < 5
    assert "64 workers" in first.row["error"] and "do not fit" in first.row["error"]
    assert "GPU: 1" in second.row["error"]
    assert set(pd.read_parquet(tmp_path / "unit").status) == {"failed"}


def test_the_drivers_collective_variables_and_the_study_env_reach_every_worker(two_rank_trial):
    for rank in two_rank_trial.probe:
        assert rank["env"]["NCCL_SOCKET_IFNAME"] == "tf-test0" and rank["env"]["TF_STUDY_ONLY"] == "yes"
        assert rank["env"]["CUDA_VISIBLE_DEVICES"] != "7"  # device visibility is Ray's, per worker


def test_a_trial_leaves_this_process_as_it_was_and_its_ranks_get_trains_settings(two_rank_trial):
    # Train's controller settings are set for the fit only (a user's own value wins), and its storage
    # is a temporary folder that is removed: nothing accumulates in ~/ray_results (a study leaves
    # nothing either: test_shared_group.py; the train CLI: test_study_run.py).
    before, after = two_rank_trial.environ
    assert after == before
    for rank in two_rank_trial.probe:
        seen = rank["env"]
        assert seen["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == USERS_INTERVAL
        assert seen["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == TRAIN_ENV["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"]
        assert float(seen[START_TIMEOUT_ENV]) == min(41.0, faults.time_limit_s(TWO_RANKS, False))
        shutdown = "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"
        assert seen[shutdown] == EMBEDDED_TRAIN_ENV[shutdown]  # the embedded cluster's, for every fit
    assert not list(Path(tempfile.gettempdir()).glob("tinyfold-unit-w2-*"))  # Train's storage, removed
