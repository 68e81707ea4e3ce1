"""One process on one device: the reference point every Ray trial is compared with."""

from __future__ import annotations

from typing import Any

from tinyfold_ray.config import ModelConfig, TrainConfig
from tinyfold_ray.device import comm_backends, device_name, provenance, resolve_backend, torch_device
from tinyfold_ray.flops import utilization
from tinyfold_ray.train.loop import run_timed_loop
from tinyfold_ray.train.step import build_training
from tinyfold_ray.train.timing import step_stats


def train_single(model_cfg: ModelConfig, train_cfg: TrainConfig, device: str = "auto") -> dict[str, Any]:
    """Train on one device and return the run's figures (the keys of `--json`)."""
    backend = resolve_backend(device)
    dev = torch_device(backend)
    training = build_training(model_cfg, train_cfg, dev)
    result = run_timed_loop(
        training.step,
        training.data,
        warmup_steps=train_cfg.warmup_steps,
        num_steps=train_cfg.num_steps,
        device=dev,
    )
    stats = step_stats([result.step_times_s], train_cfg.batch_size)
    name = device_name(dev)
    return {
        "backend": backend,
        "comm_backend": comm_backends(backend)[1],
        "device_name": name,
        "num_params": training.num_params,
        "batch_size": train_cfg.batch_size,
        "amp": train_cfg.amp,
        "compile": train_cfg.compile,
        "cuda_graph": train_cfg.cuda_graph,
        "attention": model_cfg.attention,
        "fused_optimizer": training.fused_optimizer,
        "num_threads": train_cfg.num_threads,
        "warmup_steps": train_cfg.warmup_steps,
        "steps": train_cfg.num_steps,
        **stats,
        **utilization(model_cfg, stats["throughput_samples_per_sec"], name, train_cfg.amp),
        "warmup_time_s": result.warmup_time_s,
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
        "losses": result.losses,
        "peak_memory_bytes": result.peak_memory_bytes,
        **provenance(),
    }


def format_summary(run: dict[str, Any]) -> str:
    memory = run["peak_memory_bytes"]
    memory_text = f"{memory / 2**20:.1f} MiB" if memory is not None else "n/a on cpu"
    return "\n".join(
        [
            f"device      {run['backend']} ({run['device_name']}), torch {run['torch_version']}",
            f"model       {run['num_params']:,} parameters, batch {run['batch_size']}, amp {run['amp']}, "
            f"compile {run['compile']}" + (", whole step in a CUDA graph" if run["cuda_graph"] else ""),
            f"throughput  {run['throughput_samples_per_sec']:.2f} samples/s "
            f"(median step {run['step_time_median_s'] * 1e3:.1f} ms, p95 {run['step_time_p95_s'] * 1e3:.1f} ms, "
            f"{run['steps']} steps after {run['warmup_steps']} warm-up)",
            f"compute     {format_utilization(run)}",
            f"peak memory {memory_text}",
            f"loss        {run['first_loss']:.4f} -> {run['last_loss']:.4f}",
        ]
    )


def format_utilization(run: dict[str, Any]) -> str:
    """'6.3 TFLOP/s (MFU 0.64 %)': the MFU is n/a where flops.py knows no peak for the device."""
    mfu = run["mfu"]
    mfu_text = f"MFU {mfu * 100:.2f} %" if mfu is not None else "MFU n/a: no known peak for this device"
    return f"{run['achieved_tflops']:.3g} TFLOP/s ({mfu_text})"
