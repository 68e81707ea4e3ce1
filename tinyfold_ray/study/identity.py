"""What the trials of a study would run on now: the identity columns (schema.IDENTITY_COLUMNS) that
their workers would record, read where those workers would run.

The driver may be a CPU-only head node, so nothing is read here: one small Ray task per distinct worker
shape, holding one worker's resources (its GPU too), records the values with the workers' own functions.
It runs only when finished trials are to be reused (study/runner.py's `plan`), so a fresh study or a
--dry-run starts no Ray for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StudySpecError
from tinyfold_ray.train.resources import wants_gpu, why_it_cannot_fit, worker_bundle

SOLUTION = "run them again with --rerun, or give a new --output"


def probe(trials: list[TrialSpec], connect: Callable[[], Any] | None = None) -> dict[str, dict[str, Any]]:
    """trial_id -> the IDENTITY_COLUMNS values each of `trials` (as their Tune actors get them, with
    the driver's forwarded variables in `env`) would record if it ran now on the cluster.

    `connect`: joins or starts Ray (default: ray_session.connect). Each probe waits at most its
    trials' start_timeout_s to be placed and to answer; otherwise this raises StudySpecError.
    """
    if not trials:
        return {}
    import ray

    from tinyfold_ray.ray_session import connect as default_connect

    (connect or default_connect)()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = [dict(n["Resources"]) for n in nodes]
    cluster_gpus = sum(n.get("GPU", 0.0) for n in resources)
    shapes: dict[str, list[TrialSpec]] = {}  # one probe per worker bundle, device request and env
    for trial in trials:
        use_gpu = wants_gpu(trial, cluster_gpus)
        key = json.dumps([worker_bundle(trial, use_gpu), trial.device, trial.env], sort_keys=True)
        shapes.setdefault(key, []).append(trial)
    refs = {}
    for key, group in shapes.items():
        use_gpu = wants_gpu(group[0], cluster_gpus)
        bundle = worker_bundle(group[0], use_gpu)
        reason = why_it_cannot_fit(bundle, 1, "PACK", resources)
        if reason:
            raise StudySpecError(f"cannot check what the finished trials ran on: {reason}; {SOLUTION}")
        options = {
            "num_cpus": bundle["CPU"],
            "num_gpus": bundle.get("GPU", 0),
            "resources": {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")},
        }
        refs[key] = ray.remote(identity_here).options(**options).remote(group[0], use_gpu)
    timeout = max(t.start_timeout_s for t in trials)
    _, waiting = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    for ref in waiting:
        ray.cancel(ref, force=True)
    if waiting:
        raise StudySpecError(
            f"cannot check what the finished trials ran on: a task with one worker's resources did not "
            f"run within {timeout:g} s (start_timeout_s); {SOLUTION}"
        )
    gpus_of = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in nodes}
    found = {}
    for key, group in shapes.items():
        try:
            here = ray.get(refs[key])
        except Exception as e:  # noqa: BLE001 - the worker's own failure, as one line
            from tinyfold_ray.train.trial import failure_reason

            raise StudySpecError(
                f"cannot check what the finished trials ran on: {failure_reason(e)}; {SOLUTION}"
            ) from None
        node_id = here.pop("node_id")
        here["node_gpus"] = gpus_of.get(node_id, 0) if wants_gpu(group[0], cluster_gpus) else 0
        found.update({t.trial_id: here for t in group})
    return found


def identity_here(spec: TrialSpec, use_gpu: bool) -> dict[str, Any]:
    """What a worker of `spec` records on this node (run as a Ray task holding one worker's resources),
    with the functions the workers and the trial row use; plus this node's id (for node_gpus)."""
    import ray

    from tinyfold_ray.device import device_name, provenance
    from tinyfold_ray.train.environment import recorded_env
    from tinyfold_ray.train.trial import requested_device, worker_env
    from tinyfold_ray.train.worker import worker_device

    backend, device = worker_device(requested_device(spec, use_gpu), use_gpu, local_rank=0)
    versions = provenance()
    return {
        "device_name": device_name(device),
        "backend": backend,
        "torch_version": versions["torch_version"],
        "ray_version": versions["ray_version"],
        # The collective library's version, where one is used (gloo has none).
        "comm_library_version": versions.get("comm_library_version") if backend != "cpu" else None,
        "env_vars": recorded_env(worker_env(spec)),
        "node_id": ray.get_runtime_context().get_node_id(),
    }
