"""Which device a process trains on, and what to call it: cpu, cuda or rocm (never assume NVIDIA).

ROCm builds of torch expose AMD GPUs through the `torch.cuda` API; `torch.version.hip` tells them apart.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence

import torch

from tinyfold_ray.config import DEVICE_VISIBILITY_VARS
from tinyfold_ray.errors import ConfigError

VISIBLE_DEVICE_VARS = DEVICE_VISIBILITY_VARS


class DeviceChoiceError(ConfigError):
    """A worker's GPU cannot be told from its visible-device variables and torch's device count."""


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


def _listed(value: str | None) -> list[str] | None:
    """'4, 6,7' -> ['4', '6', '7']; None when the variable is unset. Ids may be UUIDs (GPU-...)."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def _honoured_lists(env: Mapping[str, str], rocm: bool) -> list[tuple[str, list[str]]]:
    """The visible-device lists that may number this process's devices, most likely first.

    CUDA reads only CUDA_VISIBLE_DEVICES. ROCm's HIP runtime reads HIP_VISIBLE_DEVICES or
    CUDA_VISIBLE_DEVICES ("the same effect", ROCm's GPU isolation page), and torch's own ROCm device
    count lets HIP_VISIBLE_DEVICES win when both are set; but that precedence is not documented as a
    contract, and Ray on AMD sets the two to different lists (HIP: the worker's own GPU, CUDA: its
    node's union). So both are candidates, and the device count decides which one this process obeys.
    ROCR_VISIBLE_DEVICES filters devices below HIP (HIP's ids index into what ROCR left), so it numbers
    the devices only when neither HIP nor CUDA variable is set.
    """
    names = ("HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES") if rocm else ("CUDA_VISIBLE_DEVICES",)
    found = [(name, _listed(env.get(name))) for name in names]
    found = [(name, ids) for name, ids in found if ids is not None]
    if rocm and not found and env.get("ROCR_VISIBLE_DEVICES") is not None:
        found = [("ROCR_VISIBLE_DEVICES", _listed(env["ROCR_VISIBLE_DEVICES"]))]
    return found


def choose_gpu_ordinal(
    *,
    local_rank: int,
    assigned_ids: Sequence[str],
    device_count: int,
    env: Mapping[str, str],
    rocm: bool,
) -> int:
    """The torch ordinal (0 .. device_count-1) of this worker's GPU, or a DeviceChoiceError.

    `assigned_ids`: the GPU ids Ray gave this worker (its `get_accelerator_ids()['GPU']`), empty
    outside Ray. The ordinal is the position of the worker's id in the visible-device list whose
    length equals the device count torch reports: that is the list the runtime really applied, whichever
    variable wins on this platform. Several workers sharing a GPU (fractional GPUs) get the same ordinal.
    """
    kind = "ROCm" if rocm else "CUDA"

    def fail(why: str) -> DeviceChoiceError:
        shown = ", ".join(f"{v}={env[v]!r}" if v in env else f"{v} unset" for v in VISIBLE_DEVICE_VARS)
        return DeviceChoiceError(
            f"cannot choose the GPU of local rank {local_rank}: {why}; torch ({kind}) sees "
            f"{device_count} device(s); Ray assigned GPU id(s) {list(assigned_ids) or 'none'}; {shown}"
        )

    if device_count < 1:
        raise fail("no GPU is visible to this process")
    lists = _honoured_lists(env, rocm)
    if not assigned_ids:
        # Outside Ray GPU scheduling: one process per visible device, in local-rank order.
        if local_rank >= device_count:
            raise fail(f"local rank {local_rank} has no device of its own")
        return local_rank
    own = assigned_ids[0]
    if not lists:
        # Nothing restricts visibility: Ray's ids are the physical ordinals.
        if own.isdigit() and int(own) < device_count:
            return int(own)
        raise fail(f"GPU id {own!r} is not an ordinal below the device count")
    for _, ids in lists:
        if len(ids) == device_count and own in ids:
            return ids.index(own)
    candidates = " or ".join(name for name, _ in lists)
    raise fail(f"no visible-device list ({candidates}) has {device_count} entries including {own!r}")


def gpu_index(local_rank: int, assigned_ids: Sequence[str] | None = None) -> int:
    """This process's GPU ordinal, chosen from what torch really sees (see `choose_gpu_ordinal`)."""
    return choose_gpu_ordinal(
        local_rank=local_rank,
        assigned_ids=list(assigned_ids or []),
        device_count=torch.cuda.device_count(),
        env=os.environ,
        rocm=bool(torch.version.hip),
    )


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


def comm_library_version() -> str | None:
    """The NCCL version torch was built with ("2.21.5"), RCCL's on a ROCm build; None on a CPU build.

    A CPU-only torch has no NCCL binding at all (the call raises AttributeError there).
    """
    if not (torch.version.cuda or torch.version.hip):
        return None
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


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
        "comm_library_version": comm_library_version(),
        "hostname": socket.gethostname(),
        "platform": f"{platform.system()} {platform.machine()} ({sys.platform})",
    }
