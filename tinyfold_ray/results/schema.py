"""The result contract: column names and Arrow types of the trials and steps tables.

Pure pyarrow: the summary and any user analysis read these files without torch or Ray.
Layout of one study's results (``pd.read_parquet(study_dir)`` reads the trials table directly,
because pyarrow skips paths that start with ``_`` or ``.``)::

    <output>/<study>/<trial_id>.parquet          one row per trial
    <output>/<study>/_steps/<trial_id>.parquet   one row per (trial, rank, measured step)
    <output>/<study>/_summary/                   summary tables and plots
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

STEPS_DIR = "_steps"
SUMMARY_DIR = "_summary"

_STR = pa.string()
_INT = pa.int64()
_FLOAT = pa.float64()
_BOOL = pa.bool_()
_TIME = pa.timestamp("us", tz="UTC")

# Settings a study may sweep; the summary groups trials by every one of them except the worker count
# (and, by scaling mode, except the batch that changes with it).
SETTING_COLUMNS: dict[str, pa.DataType] = {
    "scaling": _STR,
    "batch_per_worker": _INT,
    "global_batch": _INT,
    "amp": _STR,
    "compile": _STR,
    "attention": _STR,
    "fused_optimizer": _BOOL,
    "c_m": _INT,
    "c_z": _INT,
    "num_blocks": _INT,
    "num_seqs": _INT,
    "seq_len": _INT,
    "bucket_cap_mb": _FLOAT,
    "gradient_as_bucket_view": _BOOL,
    "static_graph": _BOOL,
    "cpus_per_worker": _FLOAT,
    "placement_strategy": _STR,
}

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
    **SETTING_COLUMNS,
    "backend": _STR,  # cuda | rocm | cpu (a property of the machine, so not a group key)
    "comm_backend": _STR,  # nccl | rccl | gloo
    "device_name": _STR,
    "num_params": _INT,
    "steps": _INT,  # measured steps
    "warmup_steps": _INT,
    "seed": _INT,
    "throughput_samples_per_sec": _FLOAT,  # global batch / median step time; TinyOpenFold's name
    "throughput_mean_samples_per_sec": _FLOAT,  # global batch / mean step time
    "step_time_median_s": _FLOAT,  # a step's time is the slowest rank's time for that step
    "step_time_mean_s": _FLOAT,
    "step_time_p95_s": _FLOAT,
    "first_loss": _FLOAT,
    "final_loss": _FLOAT,
    "peak_memory_bytes": _INT,  # max over ranks; null where the device does not report it
    "allreduce_time_s": _FLOAT,  # median all-reduce of a gradient-sized buffer on these workers
    "start_time": _TIME,
    "end_time": _TIME,
    "wall_time_s": _FLOAT,  # the whole trial as the driver saw it
    "overhead_s": _FLOAT,  # wall time minus the measured steps: the fixed cost per trial
    "hostnames": _STR,  # comma-separated, sorted
    "torch_version": _STR,
    "ray_version": _STR,
    "python_version": _STR,
    "cuda_version": _STR,
    "hip_version": _STR,
    "git_commit": _STR,
    "env_vars": _STR,  # JSON object: collective/GPU-runtime variables the workers got (secrets redacted)
}

STEP_COLUMNS: dict[str, pa.DataType] = {
    "schema_version": _INT,
    "study": _STR,
    "trial_id": _STR,
    "repeat": _INT,
    "world_rank": _INT,
    "local_rank": _INT,
    "node_id": _STR,
    "hostname": _STR,
    "device_name": _STR,
    "step": _INT,  # 0-based index among the measured steps
    "step_time_s": _FLOAT,
    "loss": _FLOAT,
    "peak_memory_bytes": _INT,  # this rank's peak device memory over the measured steps (null on CPU)
}

TRIAL_SCHEMA = pa.schema(list(TRIAL_COLUMNS.items()))
STEP_SCHEMA = pa.schema(list(STEP_COLUMNS.items()))
