"""Which trials share worker processes (`worker_group: shared`), and in what order they run.

By default every trial starts a worker group of its own, so repeats stay independent. A study with
`resources.worker_group: shared` runs all its trials that need the same worker processes (worker
count, resources, device, collective backend, environment) in one worker group, one trial after
another, each with a model, optimiser and data of its own: they pay the group's start-up once. Each row
records `worker_group`, a setting, so the summary never puts a shared trial and a fresh one in one point.
"""

from __future__ import annotations

import json

from tinyfold_ray.config import TrialSpec


def processes_key(trial: TrialSpec) -> str:
    """What a trial needs of its worker processes: trials with equal keys can run in the same ones."""
    needs = {
        "num_workers": trial.num_workers,
        "device": trial.device,
        "cpus_per_worker": trial.cpus_per_worker,
        "resources_per_worker": trial.resources_per_worker,
        "placement_strategy": trial.placement_strategy,
        "comm_backend": trial.comm_backend,
        "env": trial.env,
        "compile_cache": trial.compile_cache,
        "start_timeout_s": trial.start_timeout_s,
    }
    return json.dumps(needs, sort_keys=True)


def worker_groups(trials: list[TrialSpec]) -> list[list[TrialSpec]]:
    """`trials` as the worker groups that run them: a fresh trial alone, shared trials with equal
    processes_key together, each group at the place of its first trial and in the trials' order."""
    groups: dict[str, list[TrialSpec]] = {}
    for trial in trials:
        key = processes_key(trial) if trial.worker_group == "shared" else f"fresh {trial.trial_id}"
        groups.setdefault(key, []).append(trial)
    return list(groups.values())
