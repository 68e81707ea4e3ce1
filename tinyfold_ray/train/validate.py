"""`--validate-setup`: prove that a node trains, before a study spends hours on it.

Starts one Ray Train worker per local GPU (or the count asked; gloo workers on a CPU-only machine),
and on them checks what a study relies on: every rank on its own device, an all-reduce that sums
right, DDP steps with a finite loss and identical replicas; and measures the all-reduce bus bandwidth
(nccl-tests' definition) for a gradient-sized and a large buffer, and the latency + bandwidth fit a
trial records (train/allreduce_probe.py: the same barriered probe, max over ranks). Every problem is
one line.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

import torch

from tinyfold_ray.config import DDP_WARMUP_STEPS, ModelConfig, TrainConfig, TrialSpec, tiny_model_config
from tinyfold_ray.device import VISIBLE_DEVICE_VARS
from tinyfold_ray.train.allreduce_probe import FP32_BYTES, allreduce_times, fit_alpha_beta, probe_sizes

VALIDATE_TRAIN = TrainConfig(batch_size=2, num_steps=3, warmup_steps=DDP_WARMUP_STEPS, num_threads=1)
LARGE_BUFFER_BYTES = {"gpu": 256 * 2**20, "cpu": 16 * 2**20}
BANDWIDTH_REPEATS = {"gpu": 20, "cpu": 3}
# DDP keeps replicas bit-identical in fp32 (every rank applies the same averaged gradient).
REPLICA_TOLERANCE = 1e-6


def bus_bandwidth(num_bytes: int, seconds: float, num_ranks: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s of an all-reduce, as nccl-tests defines them: algbw = size / time,
    busbw = algbw x 2(n-1)/n, the traffic each link carries in a ring, comparable to link speed."""
    algbw = num_bytes / seconds
    return algbw, algbw * 2 * (num_ranks - 1) / num_ranks


def gradient_bytes() -> int:
    """fp32 gradient size of the default (TinyOpenFold v1) model: what DDP all-reduces each step."""
    from tinyfold_ray.model import TinyFold, num_parameters

    with torch.device("meta"):
        return 4 * num_parameters(TinyFold(ModelConfig()))


def validate_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs on every Ray Train worker; rank 0 returns every rank's record."""
    import ray
    import ray.train
    import torch.distributed as dist

    from tinyfold_ray.device import comm_backends, comm_library_version, device_name
    from tinyfold_ray.errors import TinyFoldError
    from tinyfold_ray.train.loop import run_timed_loop
    from tinyfold_ray.train.step import build_training
    from tinyfold_ray.train.worker import ddp_wrapper, worker_device

    spec: TrialSpec = config["spec"]
    ctx = ray.train.get_context()
    rank, local_rank, world = ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size()
    record: dict[str, Any] = {
        "world_rank": rank,
        "local_rank": local_rank,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "visible": {v: os.environ[v] for v in VISIBLE_DEVICE_VARS if v in os.environ},
        "ray_gpu_ids": ray.get_runtime_context().get_accelerator_ids().get("GPU", []),
        "error": None,
    }
    backend, device = worker_device(config["backend"], config["use_gpu"], local_rank)
    kind = "cpu" if backend == "cpu" else "gpu"
    record.update(
        backend=backend,
        comm_backend=comm_backends(backend)[1],
        ordinal=device.index,
        device_count=torch.cuda.device_count(),
        device_name=device_name(device),
        nccl_version=comm_library_version() if kind == "gpu" else None,
    )

    probe = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(probe)
    record["allreduce_sum"] = float(probe[0])  # sync point: outside any timing

    try:
        training = build_training(
            spec.model,
            spec.train,
            device,
            rank=rank,
            wrap_model=ddp_wrapper(spec.ddp, device) if world > 1 else None,
        )
        result = run_timed_loop(
            training.step,
            training.data,
            warmup_steps=spec.train.warmup_steps,
            num_steps=spec.train.num_steps,
            device=device,
        )
        record["losses"] = result.losses
        # One number per replica; DDP's replicas must agree on it after the steps.
        params = [p.detach().double().sum() for p in training.model.parameters()]
        record["param_checksum"] = float(torch.stack(params).sum())
    except TinyFoldError as e:
        record["error"] = f"{type(e).__name__}: {e}"

    record["bandwidth"] = {}
    record["allreduce_fit"] = None
    if world > 1:
        gradient_numel = gradient_bytes() // FP32_BYTES
        sizes = [*probe_sizes(gradient_numel), LARGE_BUFFER_BYTES[kind] // FP32_BYTES]
        seconds = allreduce_times(sizes, device, BANDWIDTH_REPEATS[kind])
        for label, numel in (("gradient", gradient_numel), ("large", sizes[-1])):
            record["bandwidth"][label] = (FP32_BYTES * numel, seconds[sizes.index(numel)])
        record["allreduce_fit"] = fit_alpha_beta([FP32_BYTES * n for n in sizes], seconds)

    records = [None] * world if rank == 0 else None
    dist.gather_object(record, records, dst=0)
    return records


@dataclass
class Report:
    lines: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        verdict = ["setup OK"] if self.ok else [f"{len(self.problems)} problem(s):"]
        return "\n".join([*self.lines, *verdict, *(f"problem: {p}" for p in self.problems)])


def find_problems(records: list[dict[str, Any]], use_gpu: bool) -> list[str]:
    """One line per thing that would make a study's figures wrong or its trials fail."""
    problems = []
    world = len(records)
    expected = world * (world + 1) / 2
    for r in records:
        if r["error"]:
            problems.append(f"rank {r['world_rank']} on {r['hostname']}: {r['error']}")
        if r["allreduce_sum"] != expected:
            problems.append(
                f"rank {r['world_rank']}: all-reduce summed to {r['allreduce_sum']:g}, expected {expected:g}: "
                f"the collective library ({r['comm_backend']}) returns wrong results"
            )
    if use_gpu:
        seen: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r["node_id"], r["ordinal"])
            if key in seen:
                problems.append(
                    f"ranks {seen[key]} and {r['world_rank']} on {r['hostname']} both use GPU ordinal "
                    f"{r['ordinal']} ({_visible_text(r)}): device choice is wrong"
                )
            seen.setdefault(key, r["world_rank"])
    checksums = [r.get("param_checksum") for r in records if r.get("param_checksum") is not None]
    if len(checksums) == world and world > 1:
        spread = max(checksums) - min(checksums)
        if spread > REPLICA_TOLERANCE * max(1.0, abs(checksums[0])):
            problems.append(
                f"DDP replicas differ after {len(records[0]['losses'])} steps (parameter sums spread by "
                f"{spread:.3g}): gradients are not averaged across ranks"
            )
    return problems


def _visible_text(r: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in r["visible"].items()) or "no visibility variable set"


def describe(records: list[dict[str, Any]], use_gpu: bool, where: str) -> Report:
    """The report of a validation run: per-rank devices, versions, collectives, bandwidth, problems."""
    from tinyfold_ray.device import provenance

    first, world = records[0], len(records)
    versions = provenance()
    lines = [
        f"validate-setup: {world} Ray Train worker(s) on {where}, {first['backend']} backend, "
        f"collectives {first['comm_backend']}",
        "rank  local  host                  ordinal  device                                   visible devices",
    ]
    for r in records:
        ordinal = "-" if r["ordinal"] is None else str(r["ordinal"])
        lines.append(
            f"{r['world_rank']:<5} {r['local_rank']:<6} {r['hostname'][:21]:<21} {ordinal:<8} "
            f"{r['device_name'][:40]:<40} {_visible_text(r)}"
        )
    lines.append(
        f"versions: torch {versions['torch_version']}, CUDA {versions['cuda_version']}, "
        f"HIP {versions['hip_version']}, {first['comm_backend'].upper()} {first['nccl_version'] or 'n/a'}, "
        f"Ray {versions['ray_version']}, Python {versions['python_version']}"
    )
    ok_sum = all(r["allreduce_sum"] == world * (world + 1) / 2 for r in records)
    lines.append(f"all-reduce: sum over {world} rank(s) {'correct' if ok_sum else 'WRONG'}")
    losses = first.get("losses")
    if losses:
        lines.append(f"DDP: {len(losses)} steps on {world} rank(s), loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    if world == 1:
        lines.append("bus bandwidth: n/a with one worker (nothing to all-reduce with)")
    for label in ("gradient", "large"):
        timings = [r["bandwidth"][label] for r in records if label in r["bandwidth"]]
        if not timings:
            continue
        num_bytes = timings[0][0]
        seconds = max(t[1] for t in timings)  # already the max over ranks: the probe took it
        algbw, busbw = bus_bandwidth(num_bytes, seconds, world)
        lines.append(
            f"bus bandwidth, {label} buffer ({num_bytes / 2**20:.1f} MiB): {busbw / 1e9:.2f} GB/s "
            f"(algbw {algbw / 1e9:.2f} GB/s, {seconds * 1e3:.2f} ms median, slowest rank)"
        )
    if first.get("allreduce_fit"):
        lines.append(alpha_beta_line(*first["allreduce_fit"]))
    return Report(lines=lines, problems=find_problems(records, use_gpu))


def alpha_beta_line(latency_s: float, s_per_byte: float) -> str:
    """The fitted all-reduce model as a report line: t = latency + bytes / algbw."""
    algbw = f"{1 / s_per_byte / 1e9:.2f} GB/s" if s_per_byte > 0 else "unbounded (latency-bound)"
    return f"all-reduce fit: t = {latency_s * 1e6:.1f} us + bytes / {algbw} (algbw)"


def validate_setup(device: str = "auto", num_workers: int | None = None, *, verbose: bool = False) -> Report:
    """Start the workers, run the checks, and report; a setup that cannot even start is a problem too."""
    from tinyfold_ray.ray_session import connect
    from tinyfold_ray.train.resources import alive_nodes, check_placement
    from tinyfold_ray.train.trial import failure_reason, make_trainer

    local_gpus = torch.cuda.device_count() if device != "cpu" else 0
    if num_workers is None:
        # One per local GPU; on a CPU-only machine two gloo workers, so collectives are exercised.
        num_workers = local_gpus or 2
    where = connect(verbose=verbose)
    spec = TrialSpec(
        study="validate-setup",
        trial_id="validate-setup",
        num_workers=num_workers,
        device=device,
        cpus_per_worker=1.0,
        placement_strategy="STRICT_PACK" if local_gpus else "PACK",
        start_timeout_s=120.0,
        model=tiny_model_config(),
        train=VALIDATE_TRAIN,
    )
    nodes = alive_nodes()
    use_gpu, why = check_placement(spec, nodes)
    if why is None and device == "auto" and local_gpus and not use_gpu:
        why = "torch sees GPUs but Ray does not: on AMD nodes install amdsmi (pip install amdsmi)"
    if why is not None:
        ray_gpus = sum(n.get("GPU", 0.0) for n in nodes)
        return Report(
            lines=[
                f"validate-setup: {num_workers} worker(s) on {where}; torch sees {local_gpus} GPU(s), "
                f"Ray {ray_gpus:g}"
            ],
            problems=[f"cannot place the workers: {why}"],
        )
    try:
        result = make_trainer(spec, use_gpu, train_fn=validate_worker).fit()
        if result.error is not None:
            raise result.error
        records = sorted(result.return_value, key=lambda r: r["world_rank"])
    except Exception as e:  # noqa: BLE001 - a worker that cannot start is the finding, not a crash
        return Report(
            lines=[f"validate-setup: {num_workers} worker(s) on {where}"],
            problems=[f"the workers failed: {failure_reason(e)}"],
        )
    return describe(records, use_gpu, where)
