"""Study files: YAML -> a validated StudySpec, before anything starts.

This module knows the layout of a study file (which keys go where, what may be swept); the settings
themselves, their types and their ranges are known only to the config dataclasses, which check every
value when a trial's configuration is built. Every mistake is one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfold_ray.config import (
    MAX_WORKERS,
    STALL_SLACK_S,
    DDPConfig,
    ModelConfig,
    TrainConfig,
    TrialSpec,
    check_env,
    check_value,
    kind_of,
)
from tinyfold_ray.errors import ConfigError, StudySpecError
from tinyfold_ray.study.reader import read_study_file

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SECTIONS = {"model": ModelConfig, "train": TrainConfig, "ddp": DDPConfig}
SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
assert len(SECTION_OF) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values()), "names must be unique"
# resources: key in the file -> the TrialSpec field it sets.
RESOURCE_FIELDS = {
    "device": "device",
    "cpus_per_worker": "cpus_per_worker",
    "placement": "placement_strategy",
    "extra": "resources_per_worker",
    "start_timeout_s": "start_timeout_s",
    "trial_timeout_s": "trial_timeout_s",
    "stall_slack_s": "stall_slack_s",
    "compile_cache": "compile_cache",
    "worker_group": "worker_group",
}
FILE_KEY_OF = {f: k for k, f in RESOURCE_FIELDS.items()}
# Sweep axes besides the model/train/ddp fields. batch_size is swept as batch_per_worker (weak) or
# derived from global_batch (strong); two resources are sweepable under their trial-column names.
SWEEP_BATCH = ("num_workers", "batch_per_worker", "global_batch")
SWEEP_RESOURCES = ("cpus_per_worker", "placement_strategy")
SWEEPABLE = (*SWEEP_BATCH, *SWEEP_RESOURCES, *sorted(k for k in SECTION_OF if k != "batch_size"))
TOP_LEVEL = {
    "name": str,
    "description": str,
    "output": str,
    "output_is_shared": bool,
    "scaling": str,
    "repeats": int,
    "order_seed": int,
    "max_concurrent_trials": int,
    "profile": bool,
}
TOP_LEVEL_KEYS = (*TOP_LEVEL, "resources", "env", *SECTIONS, "sweep")
MAX_REPEATS = 1000
MAX_TRIALS = 10_000
"""Trials one study may have (repeats x every sweep combination), checked before anything expands."""


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    name: str
    description: str = ""
    output: str = "results"
    output_is_shared: bool = False
    scaling: str = "weak"
    repeats: int = 1
    order_seed: int = 0
    """Seed of the run order: repeats run one after another (all of repeat 0 first), and the trials of
    each repeat in an order shuffled by this seed, so that slow drift of the machine over a study does
    not line up with the worker count or any other setting. Each trial row records its place
    (`run_order`); the same seed gives the same order, and changing it changes no result's identity."""
    max_concurrent_trials: int = 1
    device: str = "auto"
    cpus_per_worker: float = 1.0
    placement: str = "PACK"
    extra_resources: dict[str, float] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    trial_timeout_s: float | None = None
    """Wall-time limit of each trial; None = derived from the trial's work (train/faults.py)."""
    stall_slack_s: float = STALL_SLACK_S
    """How long past ten median steps a rank may finish no step before its trial ends as hung."""
    compile_cache: str | None = None
    """torch.compile's cache folder on every node (None: torch's default under /tmp)."""
    worker_group: str = "fresh"
    """fresh: new worker processes per trial; shared: one set per worker count (config.TrialSpec)."""
    profile: bool = False
    """A torch.profiler trace per rank of every trial (a few steps after the measured ones)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables for every worker of every trial."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Non-swept model/train/ddp settings, by field name."""
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    """Axis name -> values, in file order."""
    source: str = "<study>"


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    return parse_study(read_study_file(path), source=str(path))


def resolve(
    spec: StudySpec, settings: dict[str, Any], *, repeat: int = 0, trial_id: str = "trial"
) -> TrialSpec:
    """The TrialSpec of one point of the sweep (`settings`: axis -> value); the configs check it."""
    chosen = {**spec.fixed, **{k: v for k, v in settings.items() if k in SECTION_OF}}
    num_workers = settings["num_workers"]
    if spec.scaling == "strong":
        chosen["batch_size"] = settings["global_batch"] // num_workers
    elif "batch_per_worker" in settings:
        chosen["batch_size"] = settings["batch_per_worker"]
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key, value in chosen.items():
        sections[SECTION_OF[key]][key] = value
    return TrialSpec(
        study=spec.name,
        trial_id=trial_id,
        repeat=repeat,
        scaling=spec.scaling,
        num_workers=num_workers,
        device=spec.device,
        cpus_per_worker=settings.get("cpus_per_worker", spec.cpus_per_worker),
        resources_per_worker=dict(spec.extra_resources),
        placement_strategy=settings.get("placement_strategy", spec.placement),
        start_timeout_s=spec.start_timeout_s,
        trial_timeout_s=spec.trial_timeout_s,
        stall_slack_s=spec.stall_slack_s,
        compile_cache=spec.compile_cache,
        worker_group=spec.worker_group,
        profile=spec.profile,
        env=dict(spec.env),
        **{name: cls(**sections[name]) for name, cls in SECTIONS.items()},
    )


def sweep_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the sweep's values, axes in canonical order (see `axis_order`)."""
    axes = sorted(spec.sweep, key=axis_order)
    return [dict(zip(axes, values)) for values in itertools.product(*(spec.sweep[a] for a in axes))]


def axis_order(axis: str) -> tuple[int, int, str]:
    """Worker count, then the batch, then the other axes by name: the file's order never matters."""
    return (0, SWEEP_BATCH.index(axis), "") if axis in SWEEP_BATCH else (1, 0, axis)


# ----------------------------------------------------------------------------------------- parsing


class _Study:
    """Parses one raw study document; every error starts with the file it came from."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise StudySpecError(f"{self.source}: {key}: {message}")

    def config_error(
        self, e: ConfigError, path_of: typing.Callable[[str], str], context: str = ""
    ) -> typing.NoReturn:
        """Re-raise a config's error with the key's place in the file ("key=..." -> "sweep.key=...")."""
        message = str(e)
        if e.key is not None and message.startswith(f"{e.key}="):
            head, dot, rest = e.key.partition(".")
            message = f"{path_of(head)}{dot}{rest}{message[len(e.key) :]}"
        raise StudySpecError(f"{self.source}: {message}{context}") from None

    def mapping(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of keys to values, got {kind_of(value)}")
        return value

    def known_keys(
        self, where: str, value: dict, allowed: typing.Sequence[str], elsewhere: dict[str, str]
    ) -> None:
        """Refuse unknown keys with a suggestion: a close spelling here, or where the key belongs."""
        for key in value:
            if key in allowed:
                continue
            key = str(key)
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
            close = close or [k for k in allowed if key in k][:2]  # "heads" -> num_heads_msa, ...
            if key in elsewhere:
                hint = f"; did you mean {elsewhere[key]}?"
            elif close:
                hint = f"; did you mean {' or '.join(where + k for k in close)}?"
            else:
                hint = f"; allowed: {', '.join(allowed)}"
            self.fail(f"{where}{key}", f"unknown key{hint}")

    def scalar(self, key: str, value: Any, hint: Any) -> Any:
        try:
            return check_value(key, value, hint)
        except ConfigError as e:
            self.config_error(e, lambda head: head)


def _where_else(exclude: str) -> dict[str, str]:
    """Every known key outside `exclude` -> its full place in the file, for "did you mean" hints."""
    places = {k: f"{s}.{k}" for k, s in SECTION_OF.items() if s != exclude}
    places.update({k: f"resources.{k}" for k in RESOURCE_FIELDS if exclude != "resources"})
    places["batch_size"] = "sweep.batch_per_worker (or sweep.global_batch for strong scaling)"
    return places


def parse_study(raw: Any, source: str = "<study>") -> StudySpec:
    s = _Study(source)
    if not isinstance(raw, dict):
        raise StudySpecError(f"{source}: a study file must be a YAML mapping, got {kind_of(raw)}")
    s.known_keys("", raw, TOP_LEVEL_KEYS, _where_else(""))
    if "name" not in raw:
        s.fail("name", "missing; every study needs a name (its results folder)")
    top = {key: s.scalar(key, raw[key], hint) for key, hint in TOP_LEVEL.items() if key in raw}
    if not NAME_PATTERN.match(top["name"]):
        s.fail(
            "name",
            f"{top['name']!r} must be letters, digits, '.', '_' or '-' (it names a folder under output)",
        )
    try:
        TrialSpec(scaling=top.get("scaling", "weak"))
    except ConfigError as e:
        s.config_error(e, lambda head: head)
    for key, upper in (("repeats", MAX_REPEATS), ("max_concurrent_trials", MAX_WORKERS)):
        if key in top and not 1 <= top[key] <= upper:
            s.fail(key, f"must be between 1 and {upper}, got {top[key]}")
    top.update(_resources(s, raw.get("resources", {})))
    if "env" in raw:
        top["env"] = _env(s, raw["env"])
    fixed = _fixed(s, raw)
    sweep = _sweep(s, raw.get("sweep"), fixed, top.get("scaling", "weak"))
    for axis in SWEEP_RESOURCES:
        if axis in sweep and FILE_KEY_OF[axis] in raw.get("resources", {}):
            s.fail(f"sweep.{axis}", f"is also set as resources.{FILE_KEY_OF[axis]}; set it in one place")
    spec = StudySpec(**top, fixed=fixed, sweep=sweep, source=source)
    _check_points(s, spec)
    return spec


def _resources(s: _Study, raw: Any) -> dict[str, Any]:
    resources = s.mapping("resources", raw)
    s.known_keys("resources.", resources, tuple(RESOURCE_FIELDS), _where_else("resources"))
    values = {RESOURCE_FIELDS[k]: v for k, v in resources.items()}
    try:  # the TrialSpec knows the types and the allowed values (and coerces 4 to 4.0)
        checked = TrialSpec(**values)
    except ConfigError as e:
        s.config_error(e, lambda head: f"resources.{FILE_KEY_OF.get(head, head)}")
    if checked.device == "cpu" and checked.resources_per_worker.get("GPU"):
        s.fail("resources.extra", "GPU is set by resources.device, not as an extra resource")
    names = {"placement_strategy": "placement", "resources_per_worker": "extra_resources"}
    return {names.get(k, k): getattr(checked, k) for k in values}


def _env(s: _Study, raw: Any) -> dict[str, str]:
    """Numbers and booleans as YAML reads them (NCCL_IB_DISABLE: 1, NCCL_DEBUG_SUBSYS: ALL) -> strings."""
    env = s.mapping("env", raw)
    for key, value in env.items():
        if not isinstance(value, str | int | float):
            s.fail(f"env.{key}", f"must be a string or a number, got {value!r} ({kind_of(value)})")
    env = {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}
    try:
        check_env(env)
    except ConfigError as e:
        s.config_error(e, lambda head: head)
    return env


def _fixed(s: _Study, raw: dict[str, Any]) -> dict[str, Any]:
    fixed: dict[str, Any] = {}
    hints = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
    for section in SECTIONS:
        values = s.mapping(section, raw.get(section, {}))
        s.known_keys(f"{section}.", values, list(hints[section]), _where_else(section))
        for key, value in values.items():
            if key == "batch_size":
                s.fail(
                    "train.batch_size",
                    "set the batch with sweep.batch_per_worker (weak) or sweep.global_batch",
                )
            fixed[key] = s.scalar(f"{section}.{key}", value, hints[section][key])
    return fixed


def _axis_hint(axis: str) -> Any:
    if axis in SWEEP_BATCH:
        return int
    cls = SECTIONS[SECTION_OF[axis]] if axis in SECTION_OF else TrialSpec
    return typing.get_type_hints(cls)[axis]


def _sweep(s: _Study, raw: Any, fixed: dict[str, Any], scaling: str) -> dict[str, list[Any]]:
    if raw is None:
        s.fail(
            "sweep", "missing; a study sweeps at least num_workers, e.g. sweep: {num_workers: [1, 2, 4, 8]}"
        )
    raw = s.mapping("sweep", raw)
    elsewhere = {"placement": "sweep.placement_strategy", "batch_size": _where_else("")["batch_size"]}
    s.known_keys("sweep.", raw, SWEEPABLE, elsewhere)
    sweep: dict[str, list[Any]] = {}
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            s.fail(f"sweep.{key}", "is empty; give at least one value")
        values = [s.scalar(f"sweep.{key}", v, _axis_hint(key)) for v in values]
        if len(set(map(repr, values))) != len(values):
            s.fail(f"sweep.{key}", f"repeats a value in {values}; use `repeats:` for repetitions")
        if key in fixed:
            s.fail(f"sweep.{key}", f"is also fixed in its section ({fixed[key]!r}); set it in one place")
        if key in SWEEP_BATCH and min(values) < 1:
            s.fail(f"sweep.{key}", f"values must be >= 1, got {min(values)}")
        sweep[key] = values
    if "num_workers" not in sweep:
        s.fail("sweep.num_workers", "missing; a scaling study sweeps the worker count")
    if scaling == "weak" and "global_batch" in sweep:
        s.fail("sweep.global_batch", "belongs to scaling: strong; weak scaling sweeps batch_per_worker")
    if scaling == "strong" and "batch_per_worker" in sweep:
        s.fail("sweep.batch_per_worker", "belongs to scaling: weak; strong scaling sweeps global_batch")
    if scaling == "strong" and "global_batch" not in sweep:
        s.fail("sweep.global_batch", "missing; strong scaling fixes a global batch, e.g. global_batch: [32]")
    return sweep


def _check_points(s: _Study, spec: StudySpec) -> None:
    """Count the trials first (a typo must not expand into millions), then build every point's configs
    once, so a combination the settings forbid (c_m not divisible by the heads) fails before Ray."""
    points = math.prod(len(v) for v in spec.sweep.values())
    if points * spec.repeats > MAX_TRIALS:
        s.fail(
            "sweep",
            f"{points} combinations x {spec.repeats} repeats = {points * spec.repeats} trials; "
            f"a study has at most {MAX_TRIALS}",
        )
    if spec.scaling == "strong":
        for gb, n in itertools.product(spec.sweep["global_batch"], spec.sweep["num_workers"]):
            if gb % n:
                s.fail("sweep.global_batch", f"{gb} is not divisible by num_workers {n} (strong scaling)")
    batch_axis = "global_batch" if spec.scaling == "strong" else "batch_per_worker"

    def path_of(key: str) -> str:
        key = batch_axis if key == "batch_size" else key
        if key in spec.sweep:
            return f"sweep.{key}"
        if key in SECTION_OF:
            return f"{SECTION_OF[key]}.{key}"
        return f"resources.{FILE_KEY_OF.get(key, key)}"

    for point in sweep_points(spec):
        try:
            resolve(spec, point)
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in point.items())
            s.config_error(e, path_of, f" (in the trial with {where})" if len(point) > 1 else "")
