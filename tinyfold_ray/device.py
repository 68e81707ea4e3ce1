"""Which device a process trains on, and what to call it: cpu, cuda or rocm (never assume NVIDIA).

ROCm builds of torch expose AMD GPUs through the `torch.cuda` API; `torch.version.hip` tells them apart.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

import torch

from tinyfold_ray.errors import ConfigError

VISIBLE_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def gpu_kind() -> str | None:
    """'rocm' or 'cuda' when torch sees a GPU, else None."""
    if not torch.cuda.is_available():
        return None
    return "rocm" if torch.version.hip else "cuda"


def resolve_backend(requested: str) -> str:
    """Turn 'auto' | 'cpu' | 'cuda' | 'rocm' into the backend this process can really use."""
    found = gpu_kind()
    if requested == "auto":
        return found or "cpu"
    if requested in ("cuda", "rocm") and found != requested:
        have = found or "no GPU"
        raise ConfigError(
            f"device={requested!r} is not available here (torch {torch.__version__} sees {have})"
        )
    return requested


def comm_backends(backend: str) -> tuple[str, str]:
    """(torch.distributed backend, the library it really is): nccl/nccl, nccl/rccl or gloo/gloo."""
    if backend == "cpu":
        return "gloo", "gloo"
    return "nccl", ("rccl" if backend == "rocm" else "nccl")


def gpu_index(local_rank: int, assigned_ids: list[str] | None = None) -> int:
    """The torch device index of this worker's GPU among the devices it can see.

    Ray sets the visible-device variable (CUDA_VISIBLE_DEVICES or HIP_VISIBLE_DEVICES) to every GPU
    its workers on this node hold; a worker's own GPU is its assigned id's position in that list.
    Without that information, fall back to the local rank.
    """
    visible = None
    for var in VISIBLE_DEVICE_VARS:
        if os.environ.get(var):
            visible = [v.strip() for v in os.environ[var].split(",") if v.strip()]
            break
    if assigned_ids and visible and assigned_ids[0] in visible:
        return visible.index(assigned_ids[0])
    count = max(torch.cuda.device_count(), 1)
    return local_rank % count


def torch_device(backend: str, index: int = 0) -> torch.device:
    return torch.device("cpu") if backend == "cpu" else torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, whose ops run synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated device memory; None on CPU, which has no such counter."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def fused_adamw_supported(device: torch.device) -> bool:
    return device.type == "cuda"


def provenance() -> dict[str, str | None]:
    """Versions and host of this process, for the trial row."""
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return {
        "torch_version": torch.__version__,
        "ray_version": ray_version,
        "python_version": platform.python_version(),
        "cuda_version": torch.version.cuda,
        "hip_version": torch.version.hip,
        "hostname": socket.gethostname(),
        "platform": f"{platform.system()} {platform.machine()} ({sys.platform})",
    }
