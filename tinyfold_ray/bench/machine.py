"""One line that says which machine and software a figure came from."""

from __future__ import annotations

import os
import platform
from datetime import date

import torch

from tinyfold_ray.device import cpu_name


def describe_machine() -> str:
    gpus = ""
    if torch.cuda.is_available():
        kind = "ROCm " + str(torch.version.hip) if torch.version.hip else "CUDA " + str(torch.version.cuda)
        gpus = f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} ({kind})"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores{gpus}; torch {torch.__version__}, "
        f"Python {platform.python_version()}; {date.today().isoformat()}"
    )
