"""Will a trial's worker group fit the cluster? Checked up front, because Ray Train V2 waits forever
for a placement that can never happen."""

from __future__ import annotations

import math

from tinyfold_ray.config import TrialSpec


def wants_gpu(spec: TrialSpec, cluster_gpus: float) -> bool:
    if spec.device == "auto":
        return cluster_gpus > 0
    return spec.device in ("cuda", "rocm")


def worker_bundle(spec: TrialSpec, use_gpu: bool) -> dict[str, float]:
    """The Ray resources one worker reserves."""
    bundle = {"CPU": spec.cpus_per_worker, **spec.resources_per_worker}
    if use_gpu:
        bundle["GPU"] = 1.0
    return bundle


def _fits_on(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many bundles one node can hold."""
    counts = [
        math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in bundle.items() if amount > 0
    ]
    return min(counts) if counts else 0


def why_it_cannot_fit(
    bundle: dict[str, float], num_workers: int, strategy: str, nodes: list[dict[str, float]]
) -> str | None:
    """None if `num_workers` bundles can be placed on `nodes` (their total resources) under `strategy`,
    else a one-line reason naming what is missing."""
    per_node = [_fits_on(node, bundle) for node in nodes]
    wanted = ", ".join(f"{k}: {v:g}" for k, v in bundle.items())
    totals = {name: sum(node.get(name, 0.0) for node in nodes) for name in bundle}
    have = ", ".join(f"{k}: {v:g}" for k, v in totals.items())
    if strategy == "STRICT_PACK":
        if max(per_node, default=0) >= num_workers:
            return None
        return (
            f"{num_workers} workers x {{{wanted}}} must share one node (STRICT_PACK), "
            f"but no node holds more than {max(per_node, default=0)}"
        )
    if strategy == "STRICT_SPREAD":
        if sum(1 for n in per_node if n >= 1) >= num_workers:
            return None
        return (
            f"{num_workers} workers x {{{wanted}}} need {num_workers} distinct nodes (STRICT_SPREAD), "
            f"but only {sum(1 for n in per_node if n >= 1)} nodes can hold one"
        )
    if sum(per_node) >= num_workers:
        return None
    return (
        f"{num_workers} workers x {{{wanted}}} do not fit this cluster "
        f"({len(nodes)} nodes with {{{have}}} in all; {sum(per_node)} such workers fit)"
    )


def check_placement(
    spec: TrialSpec, nodes: list[dict[str, float]], reserved_cpus: float = 0.0
) -> tuple[bool, str | None]:
    """(whether the workers use GPUs, why they cannot be placed or None) for `spec` on `nodes` (their
    total resources), less `reserved_cpus` that the caller itself holds on the largest node."""
    nodes = [dict(n) for n in nodes]
    use_gpu = wants_gpu(spec, sum(n.get("GPU", 0.0) for n in nodes))
    if reserved_cpus and nodes:
        biggest = max(nodes, key=lambda n: n.get("CPU", 0.0))
        biggest["CPU"] = biggest.get("CPU", 0.0) - reserved_cpus
    bundle = worker_bundle(spec, use_gpu)
    return use_gpu, why_it_cannot_fit(bundle, spec.num_workers, spec.placement_strategy, nodes)


def trials_fit_together(trials: list[TrialSpec], nodes: list[dict[str, float]], driver_cpus: float) -> bool:
    """Whether all `trials` can hold their worker groups (and their drivers' CPU slivers) at once.

    First-fit of every worker bundle onto the nodes' free resources; a STRICT_PACK group must fit one
    node whole. A sufficient check, not an optimal packing: it may refuse a mix that a cleverer
    placement would fit, never the other way round for the strategies that pack.
    """
    free = [dict(n) for n in nodes]
    cluster_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    for trial in trials:
        bundle = worker_bundle(trial, wants_gpu(trial, cluster_gpus))
        if trial.placement_strategy == "STRICT_PACK":
            groups = [{k: v * trial.num_workers for k, v in bundle.items()}]
        else:
            groups = [bundle] * trial.num_workers
        groups = [*groups, {"CPU": driver_cpus}]
        for group in groups:
            node = next((n for n in free if _fits_on(n, group) >= 1), None)
            if node is None:
                return False
            for name, amount in group.items():
                node[name] = node.get(name, 0.0) - amount
    return True


def alive_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
