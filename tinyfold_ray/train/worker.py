"""The function every Ray Train worker runs: one DDP process, timed like one-process training.

Reads top to bottom: context -> device -> model, data, DDP, optimiser -> warm-up -> measured steps ->
this rank's compute reference -> replica check -> all-reduce probe -> gather every rank's record on
rank 0. Rank 0 returns the records; they reach the driver as `Result.return_value`, so no per-step
`ray.train.report` (a barrier) is needed. Every rank keeps a heartbeat note of its phase and step
(train/heartbeat.py), which no step waits for: the study's progress lines read rank 0's, the trial's
watchdog all of them; the same note checks the trial's deadline between steps and phases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tinyfold_ray.config import DDPConfig, ModelConfig, TrialSpec
from tinyfold_ray.data import make_batch
from tinyfold_ray.device import (
    comm_backends,
    device_name,
    gpu_index,
    provenance,
    resolve_backend,
    torch_device,
)
from tinyfold_ray.errors import TrialFailedError
from tinyfold_ray.model import distance_loss
from tinyfold_ray.train.allreduce_probe import probe_allreduce
from tinyfold_ray.train.breakdown import compute_reference_s, split_steps
from tinyfold_ray.train.heartbeat import Heartbeat
from tinyfold_ray.train.loop import run_timed_loop
from tinyfold_ray.train.profile import save_profile
from tinyfold_ray.train.step import build_training


def train_worker(
    config: dict[str, Any], *, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None
) -> list[list[dict[str, Any]]] | None:
    """Run the trial `config["spec"]`, then each of `config["more"]` ((spec, profile_dir) pairs: a
    shared worker group's next trials), each with a model, optimiser and data of its own. Rank 0
    returns each trial's records (one per rank); with more trials to come it also puts them on the
    board as each trial ends, so that a later trial's failure loses none (trial.py reads them).

    `wrap_model`, for tests only (no study or TrialSpec key reaches it): wraps this rank's bare model
    before DDP; tests/test_trial.py slows one rank with it. `config["progress"]`: the trial's
    heartbeat channel (a ProgressChannel; absent or None: no heartbeat and no deadline)."""
    entered = time.time()
    rank = ray.train.get_context().get_world_rank()
    channel = config.get("progress")
    beat = Heartbeat(channel, rank, now=entered)
    beat.locate(node_id=ray.get_runtime_context().get_node_id())
    trials = [(config["spec"], config.get("profile_dir")), *config.get("more", ())]
    finished = []
    with beat:
        for index, (spec, profile_dir) in enumerate(trials):
            if index:
                beat.next_trial()
                # Compiled code is cached per function and guarded on the module it traced: a fresh model
                # would recompile each trial until dynamo's recompile limit, then run eagerly unnoticed.
                torch.compiler.reset()
            beat.locate(trial=spec.trial_id)
            records = _train({**config, "spec": spec, "profile_dir": profile_dir}, beat, wrap_model)
            if rank == 0:
                finished.append(records)
                if index + 1 < len(trials) and channel is not None:
                    # Not waited for (a first call waited 1.3 s): calls from one caller run in order.
                    channel.board.put_records.remote(channel.run, index, records)
    return finished if rank == 0 else None


def _train(
    config: dict[str, Any],
    beat: Heartbeat,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None,
) -> list[dict[str, Any]] | None:
    spec: TrialSpec = config["spec"]
    ctx = ray.train.get_context()
    rank, local_rank, world = ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size()
    beat.phase("build")
    backend, device = worker_device(config["backend"], config["use_gpu"], local_rank)
    beat.locate(device=str(device))
    train_cfg = spec.train
    if backend == "cpu" and train_cfg.num_threads is None:
        # A CPU worker gets as many threads as CPUs it reserved, so workers never oversubscribe cores.
        train_cfg = replace(train_cfg, num_threads=max(1, int(spec.cpus_per_worker)))

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        model = wrap_model(model) if wrap_model is not None else model
        return ddp_wrapper(spec.ddp, device)(model) if world > 1 else model

    training = build_training(spec.model, train_cfg, device, rank=rank, wrap_model=wrap)
    beat.phase("warm-up", train_cfg.warmup_steps)

    def after_warmup():
        beat.phase("measured steps", train_cfg.num_steps)
        training.marks.clear()  # the breakdown covers the measured steps only

    result = run_timed_loop(
        training.step,
        training.data,
        warmup_steps=train_cfg.warmup_steps,
        num_steps=train_cfg.num_steps,
        device=device,
        after_warmup=after_warmup,
        on_step=beat.step,
    )
    # After the measured steps, so that none of what follows touches them.
    reference_s = common_loss = None
    if world > 1:
        beat.phase("time breakdown")
        reference_s = compute_reference_s(
            training.forward_backward, training.data.next_batch, training.model, device
        )
        beat.phase("replica check")  # the parameters the measured steps left: the reference does not step
        common_loss = common_batch_loss(
            training.model, spec.model, train_cfg.batch_size, train_cfg.seed, device
        )
    breakdown = split_steps(*training.marks.durations(), reference_s)
    profile_path = None
    if config.get("profile_dir"):
        beat.phase("profile")
        profile_path = save_profile(training.step, training.data.next_batch, config["profile_dir"], rank)
    beat.phase("all-reduce probe")
    allreduce = probe_allreduce(training.num_params, device)
    beat.phase("teardown")

    record = {
        "world_rank": rank,
        "local_rank": local_rank,
        "node_id": beat.where["node_id"],
        "hostname": beat.where["host"],
        "device_name": device_name(device),
        "backend": backend,
        "comm_backend": comm_backends(backend)[1],
        "num_params": training.num_params,
        "fused_optimizer": training.fused_optimizer,
        "step_times_s": result.step_times_s,
        "losses": result.losses,
        **breakdown,
        "compute_reference_s": reference_s,
        "common_batch_loss": common_loss,
        "profile_path": profile_path,
        "peak_memory_bytes": result.peak_memory_bytes,
        **allreduce,
        **provenance(),
        # When each phase began, in epoch seconds on this host's clock (the driver's split: trial.py).
        "times": beat.times(),
    }
    records = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(record, records, dst=0)
    if rank == 0:
        # When this trial's records were all here: the next trial of a shared group begins there.
        records[0]["gathered_at"] = time.time()
    return records


def worker_device(requested: str, use_gpu: bool, local_rank: int) -> tuple[str, torch.device]:
    """(backend, device) of this Ray Train worker; on a GPU, the one Ray assigned it, made current."""
    backend = resolve_backend(requested)
    if use_gpu and backend == "cpu":
        raise TrialFailedError(f"Ray gave this worker a GPU but torch {torch.__version__} sees none")
    if backend == "cpu":
        return backend, torch_device("cpu")
    assigned = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    device = torch_device(backend, gpu_index(local_rank, assigned))
    torch.cuda.set_device(device)
    return backend, device


def ddp_wrapper(cfg: DDPConfig, device: torch.device):
    """model -> DDP(model) with the configured buckets (every parameter is used: no unused-param scan).

    A single worker is not wrapped: with nobody to average with, DDP would only copy gradients into
    buckets and all-reduce them with itself (about 10 % of a CPU step), and the 1-worker baseline of
    every scaling curve should be plain single-device training.
    """

    def wrap(model: torch.nn.Module) -> DistributedDataParallel:
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            bucket_cap_mb=cfg.bucket_cap_mb,
            gradient_as_bucket_view=cfg.gradient_as_bucket_view,
            static_graph=cfg.static_graph,
        )

    return wrap


def common_batch_loss(
    model: torch.nn.Module, model_cfg: ModelConfig, batch_size: int, seed: int, device: torch.device
) -> float:
    """The loss of one batch that every rank draws alike (from `seed` alone, not the rank), in fp32 and
    without gradients: replicas that hold the same parameters give the same value, diverged ones do not.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    msa_tokens, pair_features, target = make_batch(model_cfg, batch_size, generator, device)
    bare = getattr(model, "module", model)  # DDP's forward would prepare a gradient all-reduce
    with torch.no_grad():
        loss = distance_loss(bare(msa_tokens, pair_features), target)
    return float(loss)  # sync point: after the measured steps
