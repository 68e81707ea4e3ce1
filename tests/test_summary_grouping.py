"""What the summary averages together: each study on its own settings, null as a value, the machine and
software as part of a result's identity, and the per-point straggler note.

Results are real Parquet files (one per trial, as the writer lays them out) read back with
`load_results`; every expected speedup and efficiency is worked out by hand from the throughputs given.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_summary import frame, point, repeats, trial, write_study
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.results.schema import SETTING_COLUMNS, implied_settings
from tinyfold_ray.results.summary import STRAGGLER_IMBALANCE

H100 = "NVIDIA H100 80GB HBM3"
SPLIT_NOTE = "results ran on several machines/software"

# What a schema-1 trial file held: a hand-kept subset of the settings, none of the schema-2/3 columns.
SCHEMA_1_SETTINGS = ("scaling", "batch_per_worker", "global_batch", "amp", "compile", "attention")
SCHEMA_1_SETTINGS += ("fused_optimizer", "c_m", "c_z", "num_blocks", "num_seqs", "seq_len", "bucket_cap_mb")
SCHEMA_1_SETTINGS += ("gradient_as_bucket_view", "static_graph", "cpus_per_worker", "placement_strategy")
SCHEMA_1_SETTINGS += ("steps", "warmup_steps", "seed")
NOT_IN_SCHEMA_1 = [c for c in SETTING_COLUMNS if c not in SCHEMA_1_SETTINGS]
NOT_IN_SCHEMA_1 += ["config_hash", "attempt", "node_gpus", "comm_library_version", "env_vars"]
NOT_IN_SCHEMA_1 += ["allreduce_latency_s", "allreduce_s_per_byte", "load_imbalance", "slowest_rank"]
NOT_IN_SCHEMA_1 += ["slowest_rank_host", "replica_divergence", "run_order", "loss_rank_spread"]


def write_schema_1(root, rows):
    """Trial files as schema version 1 wrote them: the columns it did not have are absent."""
    for row in rows:
        old = {k: v for k, v in row.items() if k not in NOT_IN_SCHEMA_1} | {"schema_version": 1}
        (root / row["study"]).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([old]), root / row["study"] / f"{row['trial_id']}.parquet")


def test_a_root_of_mixed_studies_groups_each_study_on_its_own_settings(tmp_path):
    # Summarised together, the weak study's swept batch_per_worker was taken as a key for the strong
    # study too (whose per-worker batch shrinks with N): every point was its own baseline, 1.00x, 100 %.
    weak = dict(study="weak", scaling="weak")
    rows = repeats([10, 12], num_workers=1, batch_per_worker=4, **weak)
    rows += repeats([20, 22], num_workers=2, batch_per_worker=4, **weak)
    rows += repeats([40, 44], num_workers=4, batch_per_worker=4, **weak)
    rows += repeats([15, 15], num_workers=1, batch_per_worker=8, **weak)
    rows += repeats([27, 27], num_workers=2, batch_per_worker=8, **weak)
    strong = dict(study="strong", scaling="strong")
    rows += repeats([8, 8], num_workers=1, batch_per_worker=16, global_batch=16, **strong)
    rows += repeats([14, 15], num_workers=2, batch_per_worker=8, global_batch=16, **strong)
    rows += repeats([24, 26], num_workers=4, batch_per_worker=4, global_batch=16, **strong)
    rows += repeats([9, 9], num_workers=1, batch_per_worker=32, global_batch=32, **strong)
    rows += repeats([17, 17], num_workers=2, batch_per_worker=16, global_batch=32, **strong)
    write_study(tmp_path, rows)
    # A schema-1 study with other settings (fp32, another seed) and none of the newer columns.
    old = dict(study="old", amp="none", seed=7, learning_rate=implied_settings()["learning_rate"])
    write_schema_1(tmp_path, repeats([5, 5], num_workers=1, **old) + repeats([9, 9], num_workers=2, **old))

    s = summarize(load_results(tmp_path))

    assert list(s["group"].unique()) == [
        "study=old",
        "study=strong, global_batch=16",
        "study=strong, global_batch=32",
        "study=weak, batch_per_worker=4",
        "study=weak, batch_per_worker=8",
    ]
    weak4 = s[s["group"] == "study=weak, batch_per_worker=4"]
    assert weak4["speedup"].tolist() == pytest.approx([1, 21 / 11, 42 / 11])  # means 11, 21, 42
    assert weak4["efficiency"].tolist() == pytest.approx([1, 21 / 22, 42 / 44])
    weak8 = point(s, group="study=weak, batch_per_worker=8", num_workers=2)
    assert (weak8["speedup"], weak8["efficiency"]) == pytest.approx((1.8, 0.9))  # 27 / 15
    strong16 = s[s["group"] == "study=strong, global_batch=16"]
    assert strong16["batch_per_worker"].tolist() == [16, 8, 4]  # one group, its per-worker batch per point
    assert strong16["speedup"].tolist() == pytest.approx([1, 1.8125, 3.125])  # 14.5 / 8, 25 / 8
    assert strong16["efficiency"].tolist() == pytest.approx([1, 0.90625, 0.78125])
    strong32 = point(s, group="study=strong, global_batch=32", num_workers=2)
    assert strong32["efficiency"] == pytest.approx(17 / 9 / 2)
    old2 = point(s, study="old", num_workers=2)
    assert (old2["speedup"], old2["efficiency"], old2["n"]) == (1.8, 0.9, 2)
    assert not s["note"].str.contains("split").any()  # one machine throughout


def test_null_is_a_value_of_its_own_not_averaged_with_a_setting():
    # nunique(dropna=True) saw one value in null and 4: the two curves were averaged as repeats.
    rows = repeats([10, 10], num_workers=1, num_threads=None) + repeats([18, 18], num_workers=2)
    rows += repeats([30, 30], num_workers=1, num_threads=4) + repeats([45, 45], num_workers=2, num_threads=4)
    s = summarize(frame(rows))

    assert list(s["group"].unique()) == ["num_threads=4", "num_threads=null"]
    assert point(s, group="num_threads=null", num_workers=2)["speedup"] == pytest.approx(1.8)
    assert point(s, group="num_threads=4", num_workers=2)["speedup"] == pytest.approx(1.5)
    assert s["n"].eq(2).all()


def test_a_setting_a_file_lacks_is_the_default_of_its_time_not_null(tmp_path):
    default_lr = implied_settings()["learning_rate"]
    lacking = trial(study="s", num_workers=1, throughput_samples_per_sec=10.0)
    (tmp_path / "s").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{k: v for k, v in lacking.items() if k != "learning_rate"}]),
        tmp_path / "s" / "lacking.parquet",
    )
    write_study(tmp_path, [trial(num_workers=1, repeat=1, throughput_samples_per_sec=12.0)])  # the default
    write_study(tmp_path, repeats([21, 21], num_workers=2))
    # A column present with null is a value the trial recorded, not the default.
    write_study(tmp_path, repeats([30, 30], num_workers=1, learning_rate=None))
    write_study(tmp_path, repeats([33, 33], num_workers=2, learning_rate=None))

    df = load_results(tmp_path / "s")
    by_file = df.set_index("trial_id")["learning_rate"]
    assert by_file[lacking["trial_id"]] == default_lr
    assert df["learning_rate"].isna().sum() == 4
    s = summarize(df)
    assert list(s["group"].unique()) == [f"learning_rate={default_lr}", "learning_rate=null"]
    default = point(s, group=f"learning_rate={default_lr}", num_workers=2)
    assert (default["speedup"], default["baseline_workers"]) == (21 / 11, 1)  # means 11 (10, 12) and 21
    assert point(s, group="learning_rate=null", num_workers=2)["speedup"] == pytest.approx(1.1)


@pytest.mark.parametrize(
    ("column", "other"),
    [
        ("device_name", "AMD Instinct MI300X"),
        ("backend", "rocm"),
        ("node_gpus", 4),
        ("torch_version", "2.11.0"),
        ("ray_version", "2.59.0"),
        ("comm_library_version", "2.21.5"),
        ("env_vars", '{"NCCL_ALGO": "Ring"}'),
        ("comm_library_version", None),  # an older file's null is a value of its own
    ],
)
def test_trials_that_ran_on_other_machines_or_software_are_never_averaged(column, other):
    # Before, an H100 trial and one on the other machine were one mean; only a high cv hinted at it.
    usual = trial()[column]
    rows = repeats([10, 10], num_workers=1) + repeats([18, 18], num_workers=2)
    rows += repeats([20, 20], num_workers=1, **{column: other})
    rows += repeats([30, 30], num_workers=2, **{column: other})
    s = summarize(frame(rows))

    labels = {f"{column}={'null' if v is None else v}": v for v in (usual, other)}
    assert sorted(s["group"].unique()) == sorted(labels)
    for label, value, speedup in zip(labels, (usual, other), (1.8, 1.5), strict=True):
        two = point(s, group=label, num_workers=2)
        assert two["speedup"] == pytest.approx(speedup)
        assert pd.isna(two[column]) if value is None else two[column] == value
    assert s["note"].eq(f"split by {column}: {SPLIT_NOTE}").all()
    assert s["n"].eq(2).all()


def test_a_failed_trial_without_a_machine_counts_where_its_settings_ran():
    # A trial that failed before its workers started records no device or versions (null): it is a
    # failure of the H100 group, not a group of its own with no baseline.
    rows = repeats([10, 10], num_workers=1) + repeats([18, 18], num_workers=2)
    unknown = dict.fromkeys(("device_name", "backend", "node_gpus", "torch_version", "ray_version"))
    rows.append(trial(num_workers=2, repeat=2, status="failed", comm_library_version=None, **unknown))
    s = summarize(frame(rows))

    assert s["group"].unique().tolist() == ["s"] and s["device_name"].tolist() == [H100, H100]
    two = point(s, num_workers=2)
    assert (two["n"], two["n_failed"], two["speedup"]) == (2, 1, 1.8)
    assert two["note"] == "1 of 3 failed"


def test_a_study_split_by_machine_keeps_its_sweep_in_the_label():
    amp = [dict(amp="bf16"), dict(amp="none")]
    rows = []
    for device, settings in ((H100, amp[0]), (H100, amp[1]), ("MI300X", amp[0])):
        rows += repeats([10, 10], num_workers=1, device_name=device, **settings)
        rows += repeats([16, 16], num_workers=2, device_name=device, **settings)
    s = summarize(frame(rows))

    assert list(s["group"].unique()) == [
        "amp=bf16, device_name=MI300X",
        f"amp=bf16, device_name={H100}",
        f"amp=none, device_name={H100}",
    ]
    split = s["amp"].eq("bf16")
    assert s.loc[split, "note"].eq(f"split by device_name: {SPLIT_NOTE}").all()
    assert s.loc[~split, "note"].eq("").all()  # amp=none ran on one machine only
    assert s["speedup"].tolist() == pytest.approx([1, 1.6] * 3)


def test_a_straggler_is_named_with_its_rank_host_and_how_much_slower():
    rows = repeats([10, 10], num_workers=1, load_imbalance=None, slowest_rank=None, slowest_rank_host=None)
    rows += repeats([15, 15, 15], num_workers=2, allreduce_latency_s=3e-5)
    for row, imbalance, rank in zip(rows[-3:], (1.25, 1.35, 1.30), (1, 0, 1), strict=True):
        row.update(load_imbalance=imbalance, slowest_rank=rank, slowest_rank_host=f"node{rank}")
    rows[-1]["allreduce_latency_s"] = 9e-5
    rows += repeats([30, 30], num_workers=4, load_imbalance=STRAGGLER_IMBALANCE)  # at the limit: fine
    s = summarize(frame(rows))

    two = point(s, num_workers=2)
    assert two["note"] == "straggler: rank 1 (node1) computes 30 % slower"  # median 1.30, 2 of 3 name rank 1
    assert (two["load_imbalance"], two["slowest_rank"], two["slowest_rank_host"]) == (1.30, 1, "node1")
    assert two["allreduce_latency_s"] == pytest.approx(3e-5)  # median of 3e-5, 3e-5, 9e-5
    assert two["allreduce_s_per_byte"] == pytest.approx(trial()["allreduce_s_per_byte"])
    assert two["replica_divergence"] == 0
    assert point(s, num_workers=4)["note"] == ""
    one = point(s, num_workers=1)
    assert one["note"] == "" and pd.isna(one["slowest_rank"]) and pd.isna(one["slowest_rank_host"])
