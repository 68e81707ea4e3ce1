"""`--validate-setup`: a few tiny steps on the chosen device, then what was found."""

from __future__ import annotations

import os

import torch

from tinyfold_ray.config import TrainConfig, tiny_model_config
from tinyfold_ray.device import VISIBLE_DEVICE_VARS, comm_backends
from tinyfold_ray.train.single import train_single


def validate_setup(device: str = "auto") -> str:
    run = train_single(tiny_model_config(), TrainConfig(batch_size=2, num_steps=3, warmup_steps=1), device)
    torch_dist, library = comm_backends(run["backend"])
    visible = ", ".join(f"{v}={os.environ[v]}" for v in VISIBLE_DEVICE_VARS if v in os.environ) or "none set"
    lines = [
        "setup OK: 3 tiny training steps ran with a finite loss",
        f"backend          {run['backend']} ({run['device_name']})",
        f"collectives      torch.distributed '{torch_dist}' ({library})",
        f"GPUs visible     {torch.cuda.device_count()} ({visible})",
        f"torch            {run['torch_version']} (CUDA {run['cuda_version']}, HIP {run['hip_version']})",
        f"ray              {run['ray_version'] or 'not installed'}",
        f"python           {run['python_version']} on {run['hostname']}",
        f"tiny step        {run['step_time_median_s'] * 1e3:.1f} ms median",
    ]
    return "\n".join(lines)
