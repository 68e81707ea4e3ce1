"""A StudySpec's sweep -> the ordered list of TrialSpecs, with deterministic names."""

from __future__ import annotations

import itertools
import re

from tinyfold_ray.config import DDPConfig, ModelConfig, TrainConfig, TrialSpec

SHORT_NAMES = {"num_workers": "w", "batch_per_worker": "b", "global_batch": "gb"}


def trial_id(settings: dict, repeat: int) -> str:
    parts = []
    for key, value in settings.items():
        if isinstance(value, bool):
            value = "on" if value else "off"
        short = SHORT_NAMES.get(key)
        parts.append(f"{short}{value}" if short else f"{key}_{value}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join([*parts, f"r{repeat}"]))


def expand(spec) -> list[TrialSpec]:
    """Every trial of the study. Repeats are the outer loop, so that drift in the machine over a long
    study spreads across configurations instead of biasing one of them."""
    from tinyfold_ray.study.spec import SECTION_FIELDS

    # Canonical axis order (worker count, batch, then the file's order) keeps names stable however
    # the file orders its sweep.
    axes = sorted(
        spec.sweep,
        key=lambda a: (a not in SHORT_NAMES, list(SHORT_NAMES).index(a) if a in SHORT_NAMES else 0),
    )
    trials = []
    for repeat in range(spec.repeats):
        for values in itertools.product(*(spec.sweep[a] for a in axes)):
            settings = dict(zip(axes, values))
            num_workers = settings["num_workers"]
            chosen = {**spec.fixed, **{k: v for k, v in settings.items() if k in SECTION_FIELDS}}
            if spec.scaling == "strong":
                chosen["batch_size"] = settings["global_batch"] // num_workers
            elif "batch_per_worker" in settings:
                chosen["batch_size"] = settings["batch_per_worker"]
            sections = {name: {} for name in ("model", "train", "ddp")}
            for key, value in chosen.items():
                sections[SECTION_FIELDS[key][0]][key] = value
            trials.append(
                TrialSpec(
                    study=spec.name,
                    trial_id=trial_id(settings, repeat),
                    repeat=repeat,
                    scaling=spec.scaling,
                    num_workers=num_workers,
                    device=spec.device,
                    cpus_per_worker=spec.cpus_per_worker,
                    resources_per_worker=dict(spec.extra_resources),
                    placement_strategy=spec.placement,
                    start_timeout_s=spec.start_timeout_s,
                    trial_timeout_s=spec.trial_timeout_s,
                    model=ModelConfig(**sections["model"]),
                    train=TrainConfig(**sections["train"]),
                    ddp=DDPConfig(**sections["ddp"]),
                )
            )
    return trials
