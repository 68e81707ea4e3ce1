"""The result contract: column names and Arrow types of the trials and steps tables.

Pure pyarrow and the config dataclasses: the summary and any user analysis read these files without
torch or Ray.
Layout of one study's results (``pd.read_parquet(study_dir)`` reads the trials table directly,
because pyarrow skips paths that start with ``_`` or ``.``)::

    <output>/<study>/<trial_id>.parquet          one row per trial
    <output>/<study>/_steps/<trial_id>.parquet   one row per (trial, rank, measured step)
    <output>/<study>/_attempts/<trial_id>.attempt<k>.parquet        earlier attempts of a trial
    <output>/<study>/_steps/_attempts/<trial_id>.attempt<k>.parquet their steps
    <output>/<study>/_steps/_pending/<trial_id>.attempt<k>.parquet  steps written before their trial
                                                 file (the commit point; results/writer.py)
    <output>/<study>/_summary/                   summary tables and plots
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

import pyarrow as pa

from tinyfold_ray.config import DDPConfig, ModelConfig, TrainConfig, TrialSpec

SCHEMA_VERSION = 3
"""3: what a result ran on (IDENTITY_COLUMNS), per-rank compute, replica check, alpha-beta all-reduce;
first_loss/final_loss are means over the first/last measured steps. 2: every resolved setting is a
column, plus config_hash and attempt. 1: a hand-kept subset."""

STEPS_DIR = "_steps"
SUMMARY_DIR = "_summary"
ATTEMPTS_DIR = "_attempts"
PROFILES_DIR = "_profiles"

_STR = pa.string()
_INT = pa.int64()
_FLOAT = pa.float64()
_BOOL = pa.bool_()
_TIME = pa.timestamp("us", tz="UTC")
_ARROW = {str: _STR, int: _INT, float: _FLOAT, bool: _BOOL}

# Settings whose column names differ from their config field (kept from schema version 1).
RENAMED = {"batch_size": "batch_per_worker", "num_steps": "steps"}
# TrialSpec fields recorded as settings; the rest (names, timeouts, test aids) do not change a result.
_TRIAL_SETTINGS = (
    "scaling",
    "num_workers",
    "device",
    "cpus_per_worker",
    "placement_strategy",
    "worker_group",
)


def _arrow_type(hint: Any) -> pa.DataType:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return _ARROW[args[0] if args else hint]


def _config_columns() -> dict[str, pa.DataType]:
    trial_hints = typing.get_type_hints(TrialSpec)
    columns = {name: _arrow_type(trial_hints[name]) for name in _TRIAL_SETTINGS}
    columns["global_batch"] = _INT
    columns["extra_resources"] = _STR  # JSON of resources_per_worker, keys sorted ("{}" when none)
    for cls in (ModelConfig, TrainConfig, DDPConfig):
        hints = typing.get_type_hints(cls)
        columns.update(
            {RENAMED.get(f.name, f.name): _arrow_type(hints[f.name]) for f in dataclasses.fields(cls)}
        )
    return columns


CONFIG_COLUMNS: dict[str, pa.DataType] = _config_columns()
"""Every resolved setting of a trial, derived from the config dataclasses (a new field is a new column)."""
SETTING_COLUMNS: dict[str, pa.DataType] = {k: v for k, v in CONFIG_COLUMNS.items() if k != "num_workers"}
"""The settings besides the worker count: what tells two scaling curves apart."""
# fused_optimizer's column records what the trial used (None asks for "where the device supports it");
# config_hash covers the request.
RESOLVED_AT_RUN = ("fused_optimizer",)


def config_values(spec: TrialSpec) -> dict[str, Any]:
    """The CONFIG_COLUMNS values of a trial, as requested (before anything is resolved on a device)."""
    values: dict[str, Any] = {name: getattr(spec, name) for name in _TRIAL_SETTINGS}
    values["global_batch"] = spec.global_batch
    values["extra_resources"] = json.dumps(spec.resources_per_worker, sort_keys=True)
    for section in (spec.model, spec.train, spec.ddp):
        values.update(
            {RENAMED.get(f.name, f.name): getattr(section, f.name) for f in dataclasses.fields(section)}
        )
    assert values.keys() == CONFIG_COLUMNS.keys()
    return values


# A setting column that an older file lacks holds, for that file, the default of the time it was
# written. Every setting so far was added with a default that kept the earlier behaviour, so that is
# today's default; a default changed later goes here with the value older files imply.
_IMPLIED_BEFORE_COLUMN: dict[str, Any] = {}


def implied_settings() -> dict[str, Any]:
    """What each CONFIG_COLUMNS column means for a result file written before the column existed."""
    return {**config_values(TrialSpec()), **_IMPLIED_BEFORE_COLUMN}


def config_hash(values: dict[str, Any]) -> str:
    """A stable digest of `config_values` (no names or repeat index): equal hashes, equal settings."""
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _INT,
    "study": _STR,
    "trial_id": _STR,
    "repeat": _INT,
    "status": _STR,  # ok | failed
    "error": _STR,  # null when ok
    "num_workers": _INT,
    "num_gpus": _INT,  # workers holding a GPU (0 on CPU); TinyOpenFold's summary.csv name
    "num_nodes": _INT,  # distinct Ray node ids among the workers
    "workers_per_node": _INT,  # the most workers on one node
    "attempt": _INT,  # 1 for a trial's first run; older attempts are kept under _attempts/
    **SETTING_COLUMNS,
    "config_hash": _STR,  # config_hash(config_values(trial))
    "backend": _STR,  # cuda | rocm | cpu (a property of the machine, so not a group key)
    "comm_backend": _STR,  # nccl | rccl | gloo
    "device_name": _STR,
    "num_params": _INT,
    "throughput_samples_per_sec": _FLOAT,  # global batch / median step time; TinyOpenFold's name
    "throughput_mean_samples_per_sec": _FLOAT,  # global batch / mean step time
    "step_time_median_s": _FLOAT,  # a step's time is the slowest rank's time for that step
    "step_time_mean_s": _FLOAT,
    "step_time_p95_s": _FLOAT,
    # Means over every rank of the first / last k measured steps, k = max(1, min(5, steps // 4)).
    "first_loss": _FLOAT,
    "final_loss": _FLOAT,
    "peak_memory_bytes": _INT,  # max over ranks; null where the device does not report it
    "allreduce_time_s": _FLOAT,  # all-reduce of a gradient-sized buffer on these workers (max over ranks)
    # The all-reduce as latency + size x time per byte (alpha-beta), fitted from probes at several sizes
    # on this trial's workers (so at its worker count and node count); null with one worker.
    "allreduce_latency_s": _FLOAT,
    "allreduce_s_per_byte": _FLOAT,
    # Where the step time goes (train/breakdown.py): medians over every (rank, measured step).
    "compute_time_median_s": _FLOAT,  # forward + backward without the all-reduce wait
    "comm_exposed_median_s": _FLOAT,  # the all-reduce wait that did not overlap backward (0 alone)
    "optimizer_time_median_s": _FLOAT,
    "rank_skew_median_s": _FLOAT,  # per step: slowest minus fastest rank; the median over steps
    "loss_rank_spread": _FLOAT,  # (max - min) / median over ranks of each rank's mean measured loss
    # Each rank's own compute (its no-sync forward + backward) against the others; null with one worker.
    "load_imbalance": _FLOAT,  # slowest rank's compute over the median of the others' (1.0: balanced)
    "slowest_rank": _INT,  # the world rank whose compute is slowest
    "slowest_rank_host": _STR,
    # Replicas that diverged: (max - min) / median over ranks of the loss of one common batch after the
    # measured steps (0 when every replica holds the same parameters); null with one worker.
    "replica_divergence": _FLOAT,
    "run_order": _INT,  # position of the trial in its study's (shuffled) run order; null if unknown
    "flops_per_sample": _FLOAT,  # forward + backward matrix FLOPs of one sample (flops.py)
    "achieved_tflops": _FLOAT,  # flops_per_sample x throughput, in TFLOP/s
    "mfu": _FLOAT,  # achieved / the device's dense peak at this precision; null where unknown
    "profile_path": _STR,  # where the torch.profiler traces went (profile: true), else null
    "start_time": _TIME,
    "end_time": _TIME,
    "wall_time_s": _FLOAT,  # the whole trial as the driver saw it
    "overhead_s": _FLOAT,  # wall time minus the measured steps: the fixed cost per trial
    # Where the wall time went (PHASE_COLUMNS, consecutive, so they add up to wall_time_s), each phase
    # ending when its slowest rank ends it; null when the trial failed (no rank's timestamps came back).
    # startup_s: the placement check, Ray Train's controller, the worker group's start and the workers'
    # imports, until the slowest rank entered the train function.
    "startup_s": _FLOAT,
    "build_s": _FLOAT,  # device, model, data, DDP, optimiser
    "warmup_s": _FLOAT,  # the untimed warm-up steps
    "measured_s": _FLOAT,  # the measured steps' wall time on the slowest rank
    "after_measure_s": _FLOAT,  # reference_s + the profile (profile: true) + probe_s
    "reference_s": _FLOAT,  # each rank's compute reference and the replica check (about 0 alone)
    "probe_s": _FLOAT,  # the all-reduce probe
    "teardown_s": _FLOAT,  # gather the records, return, shut the workers down, until end_time
    # overhead_s - the named parts outside measured_s = measured_s - the measured steps' sum: what the
    # measured loop spends between step timings (next batch, loss checks), a few ms; with several ranks
    # it can dip below 0, as the steps' sum adds each step's slowest rank (and hosts' clocks differ).
    "overhead_other_s": _FLOAT,
    # With torch.compile: warmup_s less warmup_steps median steps, i.e. what compiling cost this trial
    # (tracing, compiling or loading the compile cache, autotuning, CUDA-graph recording); null without.
    "compile_time_s": _FLOAT,
    "hostnames": _STR,  # comma-separated, sorted
    "torch_version": _STR,
    "ray_version": _STR,
    "python_version": _STR,
    "cuda_version": _STR,
    "hip_version": _STR,
    "comm_library_version": _STR,  # NCCL or RCCL version the workers' torch uses; null on gloo
    "node_gpus": _INT,  # GPUs (Ray's GPU resource) of the trial's nodes, the most of them; 0 on CPU
    "git_commit": _STR,
    "env_vars": _STR,  # JSON object: collective/GPU-runtime variables the workers got (secrets redacted)
}

STEP_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _INT,
    "study": _STR,
    "trial_id": _STR,
    "repeat": _INT,
    "attempt": _INT,
    "world_rank": _INT,
    "local_rank": _INT,
    "node_id": _STR,
    "hostname": _STR,
    "device_name": _STR,
    "step": _INT,  # 0-based index among the measured steps
    "step_time_s": _FLOAT,
    "loss": _FLOAT,
    "peak_memory_bytes": _INT,  # this rank's peak device memory over the measured steps (null on CPU)
    "compute_time_s": _FLOAT,  # this step's forward + backward, less the exposed all-reduce wait
    "comm_exposed_s": _FLOAT,  # the all-reduce wait beyond what overlapped backward
    "optimizer_time_s": _FLOAT,
    "compute_reference_s": _FLOAT,  # this rank's own no-sync forward + backward (median); null alone
}

IDENTITY_COLUMNS = (
    "device_name",
    "backend",
    "node_gpus",
    "torch_version",
    "ray_version",
    "comm_library_version",
    "env_vars",
)
"""What a result ran on: trials that differ in any of these are never averaged together, and a study
does not resume onto another value without --rerun or a new output."""

PHASE_COLUMNS = ("startup_s", "build_s", "warmup_s", "measured_s", "after_measure_s", "teardown_s")
"""A trial's wall time, phase by phase, in order: they add up to wall_time_s (train/trial.py)."""

TRIAL_SCHEMA = pa.schema(list(TRIAL_COLUMNS.items()))
STEP_SCHEMA = pa.schema(list(STEP_COLUMNS.items()))
