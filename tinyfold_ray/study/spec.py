"""Study files: YAML -> a validated StudySpec, before anything starts.

Every mistake is a StudySpecError naming the file, the key and what is allowed; unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinyfold_ray.config import (
    DEVICES,
    PLACEMENT_STRATEGIES,
    SCALING_MODES,
    DDPConfig,
    ModelConfig,
    TrainConfig,
)
from tinyfold_ray.errors import ConfigError, StudySpecError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SECTIONS = {"model": ModelConfig, "train": TrainConfig, "ddp": DDPConfig}
# batch_size is swept as batch_per_worker (weak) or derived from global_batch (strong).
SWEEP_SPECIAL = ("num_workers", "batch_per_worker", "global_batch")
RESOURCE_KEYS = ("device", "cpus_per_worker", "placement", "extra", "start_timeout_s", "trial_timeout_s")
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "output",
    "output_is_shared",
    "scaling",
    "repeats",
    "max_concurrent_trials",
    "resources",
    *SECTIONS,
    "sweep",
)


def _section_fields() -> dict[str, tuple[str, Any]]:
    """Every model/train/ddp field name -> (section, type hint). Names are unique across sections."""
    found = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            found[f.name] = (section, hints[f.name])
    return found


SECTION_FIELDS = _section_fields()
SWEEPABLE = (*SWEEP_SPECIAL, *sorted(k for k in SECTION_FIELDS if k != "batch_size"))


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    name: str
    description: str = ""
    output: str = "results"
    output_is_shared: bool = False
    scaling: str = "weak"
    repeats: int = 1
    max_concurrent_trials: int = 1
    device: str = "auto"
    cpus_per_worker: float = 1.0
    placement: str = "PACK"
    extra_resources: dict[str, float] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    trial_timeout_s: float | None = None
    """Wall-time limit of each trial; None = derived from the trial's work (train/faults.py)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Non-swept model/train/ddp settings, by field name."""
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    """Axis name -> values, in file order."""
    source: str = "<study>"


class _Checker:
    """Raises StudySpecError messages that all start with the file they came from."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise StudySpecError(f"{self.source}: {key}: {message}")

    def mapping(self, key: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping of keys to values, got {_type_name(value)}")
        return value

    def known_keys(self, key: str, value: dict[str, Any], allowed: typing.Iterable[str]) -> None:
        allowed = list(allowed)
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                self.fail(where, f"unknown key; allowed: {', '.join(allowed)}")

    def typed(self, key: str, value: Any, hint: Any) -> Any:
        """Check `value` against a simple type hint (int, float, bool, str, their Optionals, dicts)."""
        args = typing.get_args(hint)
        if type(None) in args:
            if value is None:
                return None
            hint = next(a for a in args if a is not type(None))
        if hint is bool:
            ok = isinstance(value, bool)
        elif hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif hint is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif hint is str:
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, typing.get_origin(hint) or hint)
        if not ok:
            self.fail(key, f"must be {_hint_name(hint)}, got {value!r} ({_type_name(value)})")
        return value

    def choice(self, key: str, value: Any, choices: typing.Sequence[str]) -> str:
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _hint_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise StudySpecError(f"{path}: no such study file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise StudySpecError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_study(raw, source=str(path))


def parse_study(raw: Any, source: str = "<study>") -> StudySpec:
    c = _Checker(source)
    if not isinstance(raw, dict):
        raise StudySpecError(f"{source}: a study file must be a YAML mapping, got {_type_name(raw)}")
    c.known_keys("", raw, TOP_LEVEL_KEYS)
    if "name" not in raw:
        c.fail("name", "missing; every study needs a name (its results folder)")
    name = c.typed("name", raw["name"], str)
    if not NAME_PATTERN.match(name):
        c.fail("name", f"{name!r} must be letters, digits, '.', '_' or '-' (it names a folder under output)")

    top: dict[str, Any] = {"name": name, "source": source}
    for key, hint in (
        ("description", str),
        ("output", str),
        ("output_is_shared", bool),
        ("repeats", int),
        ("max_concurrent_trials", int),
    ):
        if key in raw:
            top[key] = c.typed(key, raw[key], hint)
    top["scaling"] = c.choice("scaling", raw.get("scaling", "weak"), SCALING_MODES)
    for key in ("repeats", "max_concurrent_trials"):
        if key in top and top[key] < 1:
            c.fail(key, f"must be >= 1, got {top[key]}")

    resources = c.mapping("resources", raw.get("resources", {}))
    c.known_keys("resources", resources, RESOURCE_KEYS)
    if "device" in resources:
        top["device"] = c.choice("resources.device", resources["device"], DEVICES)
    if "placement" in resources:
        top["placement"] = c.choice("resources.placement", resources["placement"], PLACEMENT_STRATEGIES)
    for key in ("cpus_per_worker", "start_timeout_s", "trial_timeout_s"):
        if key in resources:
            value = c.typed(f"resources.{key}", resources[key], float)
            if value <= 0:
                c.fail(f"resources.{key}", f"must be > 0, got {value}")
            top[key] = value
    if "extra" in resources:
        extra = c.mapping("resources.extra", resources["extra"])
        top["extra_resources"] = {k: c.typed(f"resources.extra.{k}", v, float) for k, v in extra.items()}

    fixed: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = c.mapping(section, raw.get(section, {}))
        allowed = [f.name for f in dataclasses.fields(cls)]
        c.known_keys(section, values, allowed)
        for key, value in values.items():
            if key == "batch_size":
                c.fail(
                    "train.batch_size",
                    "set the batch with sweep.batch_per_worker (weak) or sweep.global_batch",
                )
            fixed[key] = c.typed(f"{section}.{key}", value, SECTION_FIELDS[key][1])

    sweep = _parse_sweep(c, raw.get("sweep"), fixed, top["scaling"])
    spec = StudySpec(**top, fixed=fixed, sweep=sweep)
    _check_combinations(c, spec)
    return spec


def _parse_sweep(c: _Checker, raw: Any, fixed: dict[str, Any], scaling: str) -> dict[str, list[Any]]:
    if raw is None:
        c.fail(
            "sweep", "missing; a study sweeps at least num_workers, e.g. sweep: {num_workers: [1, 2, 4, 8]}"
        )
    raw = c.mapping("sweep", raw)
    c.known_keys("sweep", raw, SWEEPABLE)
    sweep: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(values, list):
            values = [values]
        if not values:
            c.fail(f"sweep.{key}", "is empty; give at least one value")
        hint = int if key in SWEEP_SPECIAL else SECTION_FIELDS[key][1]
        values = [c.typed(f"sweep.{key}", v, hint) for v in values]
        if len(set(map(repr, values))) != len(values):
            c.fail(f"sweep.{key}", f"repeats a value in {values}; use `repeats:` for repetitions")
        if key in fixed:
            c.fail(f"sweep.{key}", f"is also fixed in its section ({fixed[key]!r}); set it in one place")
        sweep[key] = values
    if "num_workers" not in sweep:
        c.fail("sweep.num_workers", "missing; a scaling study sweeps the worker count")
    for key in SWEEP_SPECIAL:
        for v in sweep.get(key, []):
            if v < 1:
                c.fail(f"sweep.{key}", f"values must be >= 1, got {v}")
    if scaling == "weak" and "global_batch" in sweep:
        c.fail("sweep.global_batch", "belongs to scaling: strong; weak scaling sweeps batch_per_worker")
    if scaling == "strong" and "batch_per_worker" in sweep:
        c.fail("sweep.batch_per_worker", "belongs to scaling: weak; strong scaling sweeps global_batch")
    if scaling == "strong" and "global_batch" not in sweep:
        c.fail("sweep.global_batch", "missing; strong scaling fixes a global batch, e.g. global_batch: [32]")
    return sweep


def _check_combinations(c: _Checker, spec: StudySpec) -> None:
    if spec.scaling == "strong":
        for gb in spec.sweep["global_batch"]:
            for n in spec.sweep["num_workers"]:
                if gb % n:
                    c.fail("sweep.global_batch", f"{gb} is not divisible by num_workers {n} (strong scaling)")
    if spec.device == "cpu" and spec.extra_resources.get("GPU"):
        c.fail("resources.extra", "GPU is set by resources.device, not as an extra resource")
    # Build one trial's configs now, so value errors (c_m not divisible by heads...) surface before Ray.
    from tinyfold_ray.study.expand import expand

    try:
        expand(spec)
    except ConfigError as e:
        raise StudySpecError(f"{spec.source}: {e}") from None
