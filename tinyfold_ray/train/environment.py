"""Which of the driver's environment variables reach the workers, and how a trial records them.

Variables set in the shell that starts a study reach workers on the driver's own node only (they
inherit them from the embedded Ray); on a cluster, workers on other nodes never see them. The
collective and GPU-runtime libraries read theirs in the worker, so they travel in the workers'
runtime environment, next to the study file's own `env:` mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tinyfold_ray.config import DEVICE_VISIBILITY_VARS

FORWARDED_PREFIXES = ("NCCL_", "RCCL_", "TORCH_NCCL_", "GLOO_", "HSA_", "HIP_", "CUDA_", "MIOPEN_")
# Device visibility is Ray's to set per worker: the driver's value would pin every worker of every
# node to the driver's GPUs.
NOT_FORWARDED = frozenset(DEVICE_VISIBILITY_VARS)
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL", "AUTH")
REDACTED = "<redacted>"


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's collective-library and GPU-runtime variables, to be set on every worker."""
    return {
        name: value
        for name, value in sorted(environ.items())
        if name.startswith(FORWARDED_PREFIXES) and name not in NOT_FORWARDED
    }


def is_secret(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def recorded_env(env: Mapping[str, str]) -> str:
    """The trial's `env_vars` column: a JSON object of name -> value, secrets' values redacted."""
    return json.dumps(
        {name: REDACTED if is_secret(name) else value for name, value in sorted(env.items())},
        sort_keys=True,
    )
