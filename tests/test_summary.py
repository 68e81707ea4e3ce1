"""The pandas summary: loading, speedup/efficiency, noise, nodes, comparisons, and the CLI.

Frames are hand-built with known answers; every schema column is filled so dtypes match real results.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.results import load_results, summarize
from tinyfold_ray.results.compare import compare, format_compare
from tinyfold_ray.results.scaling_model import add_predictions
from tinyfold_ray.results.schema import (
    PHASE_COLUMNS,
    STEP_SCHEMA,
    STEPS_DIR,
    SUMMARY_DIR,
    TRIAL_COLUMNS,
    TRIAL_SCHEMA,
    config_values,
)
from tinyfold_ray.results.summary import fmt_setting, t_quantile_975
from tinyfold_ray.results.tables import format_markdown, format_table, repeats_needed
from tinyfold_ray.summary import main

_ids = itertools.count()
# Published Student-t 0.975 quantiles (any t table), not the code under test.
T1, T2 = 12.7062, 4.3027


def trial(**overrides):
    """One trials-table row with a plausible value in every schema column."""
    row = {
        **config_values(TrialSpec()),  # the settings this helper does not name keep their defaults
        "config_hash": None,
        "attempt": 1,
        "schema_version": 2,
        "study": "s",
        "trial_id": None,
        "repeat": 0,
        "status": "ok",
        "error": None,
        "num_workers": 1,
        "num_gpus": None,
        "num_nodes": 1,
        "workers_per_node": None,
        "scaling": "weak",
        "backend": "cuda",
        "batch_per_worker": 4,
        "global_batch": None,
        "amp": "bf16",
        "compile": "none",
        "attention": "sdpa",
        "fused_optimizer": True,
        "c_m": 64,
        "c_z": 128,
        "num_blocks": 4,
        "num_seqs": 16,
        "seq_len": 64,
        "bucket_cap_mb": 25.0,
        "gradient_as_bucket_view": True,
        "static_graph": False,
        "cpus_per_worker": 8.0,
        "placement_strategy": "PACK",
        "comm_backend": "nccl",
        "device_name": "NVIDIA H100 80GB HBM3",
        "num_params": 2_652_736,
        "steps": 20,
        "warmup_steps": 5,
        "seed": 0,
        "throughput_samples_per_sec": 10.0,
        "throughput_mean_samples_per_sec": 9.8,
        "step_time_median_s": 0.4,
        "step_time_mean_s": 0.41,
        "step_time_p95_s": 0.5,
        "first_loss": 30.0,
        "final_loss": 12.0,
        "peak_memory_bytes": 3 * 2**30,
        "allreduce_time_s": 0.01,
        "start_time": datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc),
        "end_time": datetime(2026, 1, 1, 12, 1, tzinfo=timezone.utc),
        "wall_time_s": 60.0,
        "overhead_s": 8.0,
        # The phases of the 60 s: 8 s of fixed cost around the 52 s of measured steps.
        **dict(zip(PHASE_COLUMNS, (5.0, 1.0, 0.5, 52.0, 0.3, 1.2))),
        "reference_s": 0.2,
        "probe_s": 0.1,
        "overhead_other_s": 0.0,
        "compile_time_s": None,
        "hostnames": "node0",
        "torch_version": "2.13.0",
        "ray_version": "2.60.0",
        "python_version": "3.11.7",
        "cuda_version": "12.8",
        "hip_version": None,
        "git_commit": "abc1234",
        "env_vars": "{}",
        "compute_time_median_s": 0.3,
        "comm_exposed_median_s": 0.05,
        "optimizer_time_median_s": 0.02,
        "rank_skew_median_s": 0.01,
        "loss_rank_spread": 0.05,
        "flops_per_sample": 66.6e9,
        "achieved_tflops": 0.666,
        "mfu": 0.00067,
        "profile_path": None,
        "allreduce_latency_s": 0.002,
        "allreduce_s_per_byte": 0.008 / (4 * 2_652_736),
        "load_imbalance": 1.0,
        "slowest_rank": 0,
        "slowest_rank_host": "node0",
        "replica_divergence": 0.0,
        "run_order": None,
        "comm_library_version": "2.27.3",
        "node_gpus": 8,
    }
    assert set(row) == set(TRIAL_COLUMNS), "the helper must fill every schema column"
    row.update(overrides)
    n, nodes = row["num_workers"], row["num_nodes"] or 1
    row["trial_id"] = row["trial_id"] or f"{row['study']}-w{n}-r{row['repeat']}-{next(_ids)}"
    row["num_gpus"] = n if row["num_gpus"] is None else row["num_gpus"]
    if row["workers_per_node"] is None and row["num_nodes"] is not None:
        row["workers_per_node"] = -(-n // nodes)
    if row["global_batch"] is None:
        row["global_batch"] = row["batch_per_worker"] * n
    if row["status"] == "failed":
        row["error"] = row["error"] or "RuntimeError: CUDA out of memory"
        row["throughput_samples_per_sec"] = overrides.get("throughput_samples_per_sec")
    return row


def repeats(throughputs, **overrides):
    return [trial(repeat=r, throughput_samples_per_sec=t, **overrides) for r, t in enumerate(throughputs)]


def frame(rows) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=TRIAL_SCHEMA).to_pandas()


def write_study(root, rows):
    for row in rows:
        study_dir = root / row["study"]
        study_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist([row], schema=TRIAL_SCHEMA), study_dir / f"{row['trial_id']}.parquet"
        )
    return root


def point(summary, **where):
    mask = pd.Series(True, index=summary.index)
    for col, value in where.items():
        mask &= summary[col] == value
    rows = summary[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# --------------------------------------------------------------------------------- speedup, efficiency


def test_weak_scaling_speedup_efficiency_and_statistics_over_repeats():
    rows = (
        repeats([10, 12], num_workers=1, step_time_median_s=0.4)
        + repeats([20, 22], num_workers=2)
        + repeats([40, 44, 42], num_workers=4, step_time_median_s=0.38, step_time_p95_s=0.45)
    )
    rows[-1]["step_time_median_s"] = 0.5  # medians over repeats: 0.38 (of 0.38, 0.38, 0.5)
    s = summarize(frame(rows))

    assert len(s) == 3 and s["group"].nunique() == 1
    one, two, four = (point(s, num_workers=n) for n in (1, 2, 4))
    assert one["throughput_samples_per_sec_mean"] == 11
    assert one["throughput_samples_per_sec_std"] == pytest.approx(math.sqrt(2))
    assert one["throughput_samples_per_sec_ci95"] == pytest.approx(T1 * math.sqrt(2) / math.sqrt(2), rel=1e-4)
    assert four["throughput_samples_per_sec_median"] == 42
    assert four["throughput_samples_per_sec_ci95"] == pytest.approx(T2 * 2 / math.sqrt(3), rel=1e-4)
    assert (one["speedup"], one["efficiency"]) == (1, 1)
    # The baseline's own ratio has no interval; a point's is the delta method's, written out:
    assert pd.isna(one["speedup_ci95"]) and pd.isna(one["efficiency_ci95"])
    # 4 workers vs 1: R = 42 / 11; s_4 = 2 over 3 repeats, s_1 = sqrt(2) over 2; t at min(3, 2) - 1 = 1
    se = (42 / 11) * math.sqrt(2**2 / (3 * 42**2) + 2 / (2 * 11**2))  # = 0.36263
    assert se == pytest.approx(0.36263, rel=1e-4)
    assert four["speedup_ci95"] == pytest.approx(4.6077, rel=1e-4)  # T1 * se
    assert four["efficiency_ci95"] == pytest.approx(T1 * se / 4, rel=1e-4)
    assert two["speedup"] == pytest.approx(21 / 11)
    assert two["efficiency"] == pytest.approx(21 / 22)
    assert four["speedup"] == pytest.approx(42 / 11)
    assert four["efficiency"] == pytest.approx(42 / 44)
    assert four["step_time_median_s"] == pytest.approx(0.38)
    assert four["step_time_p95_s"] == pytest.approx(0.45)
    assert list(s["n"]) == [2, 2, 3] and list(s["n_failed"]) == [0, 0, 0]
    assert list(s["num_gpus"]) == [1, 2, 4] and list(s["baseline_workers"]) == [1, 1, 1]
    assert list(s["global_batch"]) == [4, 8, 16]  # weak: the global batch grows, one group


def test_time_breakdown_medians_and_shares_of_the_step():
    rows = repeats([10, 12, 11], num_workers=2, step_time_median_s=0.5)
    for row, compute, tflops in zip(rows, (0.30, 0.34, 0.32), (0.5, 0.7, 0.6), strict=True):
        row.update(compute_time_median_s=compute, comm_exposed_median_s=0.1, achieved_tflops=tflops)
    rows[0]["optimizer_time_median_s"] = None  # not recorded in one repeat: the median of the others
    p = point(summarize(frame(rows)), num_workers=2)
    assert p["compute_time_median_s"] == pytest.approx(0.32)  # median of 0.30, 0.34, 0.32
    assert p["compute_share"] == pytest.approx(0.32 / 0.5)
    assert p["comm_exposed_share"] == pytest.approx(0.1 / 0.5)
    assert p["optimizer_time_median_s"] == pytest.approx(0.02)
    assert p["rank_skew_share"] == pytest.approx(0.01 / 0.5)
    assert p["achieved_tflops"] == pytest.approx(0.6)
    assert p["sanity"] == ""


def test_sanity_flags_loss_not_falling_diverged_replicas_and_stragglers():
    rows = repeats([10, 11], num_workers=1)  # fine: loss 30 -> 12, divergence 0, skew 0.01 of 0.4 s
    rows += repeats([20, 21], num_workers=2, final_loss=30.0)  # equal is not a fall
    rows += repeats([40, 41], num_workers=4, replica_divergence=1e-3)  # above the 1e-4 tolerance
    rows[-1]["replica_divergence"] = 5e-5  # within it: counted as agreeing
    rows += repeats([80, 81], num_workers=8, rank_skew_median_s=0.06)  # 0.06 / 0.4 s = 15 % > 10 %
    # Under DDP each rank sees other samples: a large spread of the ranks' mean losses is healthy.
    rows += repeats([150, 151], num_workers=16, loss_rank_spread=0.31)
    s = summarize(frame(rows))
    assert point(s, num_workers=1)["sanity"] == ""
    assert point(s, num_workers=2)["sanity"] == "loss did not fall in 2 of 2"
    assert (
        point(s, num_workers=4)["sanity"] == "replicas diverged (common-batch loss spread 1.0e-03 in 1 of 2)"
    )
    assert point(s, num_workers=8)["sanity"] == "straggler skew 15 % of step"
    sixteen = point(s, num_workers=16)
    assert sixteen["sanity"] == "" and sixteen["loss_rank_spread"] == pytest.approx(0.31)
    assert "straggler skew 15 % of step" in format_table(add_predictions(s))


def test_strong_scaling_groups_by_global_batch_not_per_worker_batch():
    strong = dict(scaling="strong", global_batch=16)
    rows = (
        repeats([8, 8], num_workers=1, batch_per_worker=16, **strong)
        + repeats([14, 15], num_workers=2, batch_per_worker=8, **strong)
        + repeats([24, 26], num_workers=4, batch_per_worker=4, **strong)
        # a weak group at per-worker batch 4 in the same study must stay apart
        + repeats([5, 5], num_workers=1, batch_per_worker=4)
        + repeats([9, 9], num_workers=2, batch_per_worker=4)
        + repeats([7, 7], num_workers=1, batch_per_worker=8)
    )
    s = summarize(frame(rows))

    assert list(s["group"].unique()) == [
        "scaling=strong",
        "scaling=weak, batch_per_worker=4",
        "scaling=weak, batch_per_worker=8",
    ]
    strong_rows = s[s["scaling"] == "strong"]
    assert list(strong_rows["num_workers"]) == [1, 2, 4]
    assert list(strong_rows["batch_per_worker"]) == [16, 8, 4]
    four = point(strong_rows, num_workers=4)
    assert four["speedup"] == pytest.approx(25 / 8)
    assert four["efficiency"] == pytest.approx(25 / 8 / 4)
    weak_two = point(s[s["scaling"] == "weak"], num_workers=2, batch_per_worker=4)
    assert weak_two["efficiency"] == pytest.approx(9 / 5 / 2)


def test_groups_split_on_every_swept_setting_and_baseline_is_smallest_worker_count():
    rows = (
        repeats([10, 10], num_workers=2, amp="bf16")
        + repeats([30, 30], num_workers=8, amp="bf16")
        + repeats([6, 6], num_workers=2, amp="none")
        + repeats([9, 9], num_workers=4, amp="none")
    )
    s = summarize(frame(rows))
    assert sorted(s["group"].unique()) == ["amp=bf16", "amp=none"]
    assert list(s["baseline_workers"]) == [2, 2, 2, 2]
    assert point(s, amp="bf16", num_workers=8)["efficiency"] == pytest.approx(3 / 4)
    assert point(s, amp="none", num_workers=4)["efficiency"] == pytest.approx(9 / 6 / 2)


@pytest.mark.parametrize("setting, values", [("learning_rate", (1e-3, 3e-4)), ("num_heads_msa", (4, 8))])
def test_any_varying_setting_splits_groups_and_only_it_is_named(setting, values):
    # Before schema 2 neither was a group key: the two curves were averaged as if they were repeats.
    a, b = values
    rows = (
        repeats([10, 10], num_workers=1, **{setting: a})
        + repeats([18, 18], num_workers=2, **{setting: a})
        + repeats([20, 20], num_workers=1, **{setting: b})
        + repeats([30, 30], num_workers=2, **{setting: b})
    )
    s = summarize(frame(rows))
    assert list(s["group"].unique()) == [f"{setting}={fmt_setting(v)}" for v in sorted(values)]
    assert point(s, **{setting: a}, num_workers=2)["speedup"] == pytest.approx(1.8)
    assert point(s, **{setting: b}, num_workers=2)["speedup"] == pytest.approx(1.5)
    assert s["n"].eq(2).all() and not s["noisy"].any()


def test_the_summary_uses_the_latest_attempt_of_each_trial():
    rows = [
        trial(trial_id="t1", num_workers=1, throughput_samples_per_sec=10.0),
        trial(trial_id="t2", num_workers=2, status="failed", attempt=1),
        trial(trial_id="t2", num_workers=2, throughput_samples_per_sec=15.0, attempt=2),
    ]
    s = summarize(frame(rows))
    assert s["n_failed"].tolist() == [0, 0] and s["speedup"].tolist() == [1.0, 1.5]


def test_missing_baseline_is_a_clear_note_not_nan_rows():
    rows = (
        [
            trial(num_workers=1, repeat=r, status="failed", num_nodes=None, error="OOM at step 0")
            for r in (0, 1)
        ]
        + repeats([20, 20], num_workers=2)
        + repeats([36, 36], num_workers=4)
    )
    s = summarize(frame(rows))

    base = point(s, num_workers=1)
    assert (base["n"], base["n_failed"]) == (0, 2)
    assert base["note"] == "all 2 failed: OOM at step 0"
    for n in (2, 4):
        row = point(s, num_workers=n)
        assert row["throughput_samples_per_sec_mean"] > 0
        assert pd.isna(row["speedup"]) and pd.isna(row["efficiency"])
        assert "no baseline: N=1 failed in all repeats" in row["note"]
    assert (s["note"] != "").all()

    fallback = summarize(frame(rows), fallback_baseline=True)
    four = point(fallback, num_workers=4)
    assert four["efficiency"] == pytest.approx(36 / 20 / 2)
    assert four["baseline_workers"] == 2
    assert "baseline N=2 (N=1 failed in all repeats)" in four["note"]


def test_failed_trial_is_counted_not_averaged():
    rows = repeats([10, 10], num_workers=1) + repeats([19, 19], num_workers=2)
    # A failed trial that never placed its workers (no node count), with a bogus throughput.
    rows.append(
        trial(num_workers=2, repeat=2, status="failed", num_nodes=None, throughput_samples_per_sec=999.0)
    )
    s = summarize(frame(rows))

    assert len(s) == 2
    two = point(s, num_workers=2)
    assert (two["n"], two["n_failed"]) == (2, 1)
    assert two["throughput_samples_per_sec_mean"] == 19
    assert two["speedup"] == pytest.approx(1.9)
    assert two["note"] == "1 of 3 failed"


def test_noise_flag_single_repeat_and_cv_threshold():
    rows = (
        repeats([100, 100], num_workers=1)
        + repeats([180, 220], num_workers=2)
        + repeats([390], num_workers=4)
    )
    s = summarize(frame(rows))
    cv2 = math.sqrt(800) / 200  # std 28.28 over mean 200: 14.1 %

    assert list(s["noisy"]) == [False, True, True]
    assert point(s, num_workers=2)["cv"] == pytest.approx(cv2)
    assert point(s, num_workers=2)["note"] == "cv 14.1%"
    assert point(s, num_workers=4)["note"] == "single repeat"
    assert point(s, num_workers=1)["note"] == ""

    lenient = summarize(frame(rows), cv_threshold=0.2)
    assert list(lenient["noisy"]) == [False, False, True]
    with pytest.raises(ConfigError, match="cv_threshold"):
        summarize(frame(rows), cv_threshold=0)


def test_multi_node_inter_and_intra_node_efficiency():
    rows = (
        repeats([10, 10], num_workers=1)
        + repeats([19, 19], num_workers=2)
        + repeats([36, 36], num_workers=4)
        + repeats([60, 60], num_workers=8, num_nodes=2)  # 4 per node
        + repeats([96, 96], num_workers=16, num_nodes=4)  # 4 per node
        + repeats([30, 30], num_workers=4, num_nodes=2)  # 2 per node
    )
    s = summarize(frame(rows))

    assert len(s) == 6 and s["group"].nunique() == 1
    eight, sixteen = point(s, num_workers=8), point(s, num_workers=16)
    assert eight["efficiency_inter_node"] == pytest.approx(60 / (36 * 2))
    assert sixteen["efficiency_inter_node"] == pytest.approx(96 / (36 * 4))
    assert point(s, num_workers=4, num_nodes=1)["efficiency_inter_node"] == 1
    # 2 per node: 2 workers on one node, then 4 on two
    assert point(s, num_workers=4, num_nodes=2)["efficiency_inter_node"] == pytest.approx(30 / (19 * 2))
    assert pd.isna(point(s, num_workers=1)["efficiency_inter_node"])  # 1 per node only ran on one node
    assert point(s, num_workers=4, num_nodes=1)["efficiency_intra_node"] == pytest.approx(36 / 40)
    assert point(s, num_workers=2)["efficiency_intra_node"] == pytest.approx(19 / 20)
    assert pd.isna(eight["efficiency_intra_node"])
    assert eight["efficiency"] == pytest.approx(60 / 80)  # overall, from the 1-worker baseline
    assert (eight["num_nodes"], eight["workers_per_node"]) == (2, 4)

    single_node = summarize(frame(repeats([10, 10], num_workers=1) + repeats([19, 19], num_workers=2)))
    assert single_node["efficiency_inter_node"].isna().all()
    assert single_node["efficiency_intra_node"].isna().all()


@pytest.mark.parametrize(
    ("dof", "quantile"), [(1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042), (100, 1.984), (1000, 1.962)]
)
def test_student_t_quantiles_are_exact_for_every_degree_of_freedom(dof, quantile):
    # Published two-sided 95 % values (any statistics table), not the function's own source.
    assert t_quantile_975(dof) == pytest.approx(quantile, abs=5e-4)


def test_format_table_and_markdown():
    s = summarize(frame(repeats([10, 12], num_workers=1) + repeats([20, 22], num_workers=2)))
    text = format_table(s)
    assert "s (weak scaling, baseline 1 worker)" in text
    assert "throughput (samples/s)" in text
    assert "21.00 ± 1.41" in text and "1.91x" in text and "95.5 %" in text
    assert "cv 12.9%" in text
    md = format_markdown(s)
    assert md.startswith("# Scaling summary") and "| 2 | 2 | 21.00 ± 1.41 |" in md


def test_gpus_column_is_left_out_for_cpu_only_results():
    cpu = dict(backend="cpu", comm_backend="gloo", device_name="cpu", num_gpus=0, node_gpus=0)
    s = summarize(frame(repeats([10, 12], num_workers=1, **cpu) + repeats([20, 22], num_workers=2, **cpu)))
    header = format_table(s).splitlines()[1]
    assert header.split()[:2] == ["workers", "throughput"]
    assert format_markdown(s).count("| workers | throughput (samples/s) | n |") == 1
    # one GPU point among CPU ones brings the column back, for every row
    s.loc[1, "num_gpus"] = 2
    assert format_table(s).splitlines()[1].split()[:2] == ["workers", "GPUs"]


def test_interval_wider_than_its_value_says_how_many_repeats_would_narrow_it():
    s = summarize(frame(repeats([10, 12], num_workers=1) + repeats([19, 21], num_workers=2)))
    # 2 workers: efficiency 20/11/2 = 90.9 % ± 119.8 % over 2 repeats (t 12.706 / sqrt 2 = 8.985).
    # Published t quantiles: 10 repeats, 2.262 / sqrt 10 = 0.7153: 119.8 * 0.7153 / 8.985 = 9.54 % > 9.09 %;
    # 11 repeats, 2.228 / sqrt 11 = 0.6718: 8.96 % < 9.09 %. So 11.
    text = format_table(s)
    assert "2 workers: efficiency 90.9 % ± 119.8 % (2 repeats) is a 95 % interval wider than its" in text
    assert "about 11 repeats of it and of its baseline would bring it under 10 %" in " ".join(text.split())
    # 1 worker: throughput 11 ± 12.71 (t 12.706 x std 1.414 / sqrt 2); 9 repeats: 2.306 / 3 x 1.414 =
    # 1.087 < 1.1, 8 repeats: 2.365 / sqrt 8 x 1.414 = 1.182. So 9.
    assert "1 worker: throughput 11.00 ± 12.71 samples/s (2 repeats)" in text
    assert "about 9 repeats would bring it under 10 %" in " ".join(text.split())
    assert all(len(line) <= 100 for line in text.splitlines()[4:])  # the sentences wrap for a terminal
    md = format_markdown(s)
    assert "\n\n2 workers: efficiency 90.9 % ± 119.8 % (2 repeats) is a 95 % interval" in md
    # Beyond the cap the sentence says so instead of a number.
    s.loc[1, "efficiency_ci95"] = 20 * s.loc[1, "efficiency"]
    assert "more than 1,000 repeats of it and of its baseline" in " ".join(format_table(s).split())


def test_repeats_needed_scales_the_half_width_with_t_over_sqrt_n():
    assert repeats_needed(1.198, 0.909, 2) == 11  # the case above
    assert repeats_needed(0.05, 1.0, 3) == 3  # already under 10 %: nothing more to run
    assert repeats_needed(20.0, 1.0, 2) is None  # more than REPEATS_CAP
    # within the cap, the answer is the first repeat count that reaches the goal
    n = repeats_needed(1.0, 1.0, 4)
    width = lambda m: 1.0 * (t_quantile_975(m - 1) / math.sqrt(m)) / (t_quantile_975(3) / 2)
    assert width(n) < 0.1 <= width(n - 1)


def test_summarize_rejects_a_frame_that_is_not_a_trials_table():
    with pytest.raises(ConfigError, match="throughput_samples_per_sec"):
        summarize(pd.DataFrame({"num_workers": [1]}))


# ------------------------------------------------------------------------------------------- loading


def test_load_study_directory_output_root_and_uri(tmp_path):
    rows = repeats([10, 11], num_workers=1) + repeats([5, 6], num_workers=1, study="other")
    write_study(tmp_path, rows)
    (tmp_path / "s" / SUMMARY_DIR).mkdir()  # never read as trials
    (tmp_path / "s" / "._tmp.parquet").write_bytes(b"half-written")

    one = load_results(tmp_path / "s")
    assert list(one["throughput_samples_per_sec"]) == [10, 11]
    assert list(one.columns) == list(TRIAL_COLUMNS)
    assert one.dtypes.equals(frame(rows[:2]).dtypes)

    both = load_results(str(tmp_path))
    assert sorted(both["study"].unique()) == ["other", "s"] and len(both) == 4
    assert len(load_results((tmp_path / "s").as_uri())) == 2
    assert len(pd.read_parquet(tmp_path / "s")) == 2  # no helper needed


def test_load_fills_columns_missing_in_older_schema(tmp_path):
    row = trial()
    gone = ("allreduce_time_s", "step_time_p95_s", "num_nodes", "learning_rate", "config_hash", "attempt")
    old = {k: v for k, v in row.items() if k not in gone}
    old["extra_metric"] = 1.5
    (tmp_path / "s").mkdir()
    pq.write_table(pa.Table.from_pylist([old]), tmp_path / "s" / "old.parquet")
    write_study(tmp_path, [trial(repeat=1, throughput_samples_per_sec=12.0)])

    df = load_results(tmp_path / "s")
    assert len(df) == 2
    assert df["allreduce_time_s"].isna().sum() == 1 and df["num_nodes"].isna().sum() == 1
    assert df["extra_metric"].isna().sum() == 1
    s = summarize(df)  # the learning_rate the old file lacks is the default of its time: one group
    assert s["n"].tolist() == [2] and s["num_nodes"].tolist() == [1]
    assert s["step_time_p95_s"].tolist() == [0.5]


def test_load_steps_table(tmp_path):
    write_study(tmp_path, [trial(trial_id="t0")])
    steps = [
        {"schema_version": 1, "study": "s", "trial_id": "t0", "repeat": 0, "world_rank": r, "local_rank": r,
         "node_id": "n0", "hostname": "h", "device_name": "cpu", "step": k, "step_time_s": 0.1, "loss": 1.0}
        for r in (1, 0) for k in (1, 0)
    ]  # fmt: skip
    (tmp_path / "s" / STEPS_DIR).mkdir()
    pq.write_table(pa.Table.from_pylist(steps, schema=STEP_SCHEMA), tmp_path / "s" / STEPS_DIR / "t0.parquet")

    df = load_results(tmp_path / "s", steps=True)
    assert list(zip(df["world_rank"], df["step"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(load_results(tmp_path / "s")) == 1


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results"):
        load_results(tmp_path / "empty")
    write_study(tmp_path, [trial()])
    with pytest.raises(ConfigError, match="no step tables"):
        load_results(tmp_path / "s", steps=True)


# --------------------------------------------------------------------------------------------- compare


def _two_devices():
    mi = repeats([10, 10], num_workers=1, study="mi300x", backend="rocm", device_name="MI300X") + repeats(
        [15, 15], num_workers=8, study="mi300x", backend="rocm", device_name="MI300X"
    )
    h = repeats([12, 12], num_workers=1, study="h100") + repeats([60, 60], num_workers=8, study="h100")
    h += repeats([7, 7], num_workers=2, study="h100")  # no MI300X twin: left out
    return summarize(frame(mi)), summarize(frame(h))


def test_compare_ratios_on_matching_configurations():
    a, b = _two_devices()
    cmp = compare(a, b)
    assert list(cmp["num_workers"]) == [1, 8]
    eight = cmp.iloc[1]
    assert eight["throughput_ratio"] == pytest.approx(60 / 15)
    assert eight["efficiency_ratio"] == pytest.approx((60 / 12 / 8) / (15 / 10 / 8))
    assert (eight["study_a"], eight["study_b"]) == ("mi300x", "h100")
    assert "A = mi300x (MI300X), B = h100" in format_compare(cmp)


def test_compare_without_matches_names_the_differing_setting():
    a, b = _two_devices()
    b["cpus_per_worker"] = 16.0
    with pytest.raises(ConfigError, match=r"cpus_per_worker \(A: 8; B: 16\).*--ignore"):
        compare(a, b)
    assert len(compare(a, b, ignore=["cpus_per_worker"])) == 2


@pytest.mark.parametrize(
    ("scaling", "label", "derived"),
    [("weak", "batch_per_worker", "global_batch"), ("strong", "global_batch", "batch_per_worker")],
)
def test_compare_labels_rows_by_the_batch_that_defines_the_curve(scaling, label, derived):
    # Two batch sizes, 1 and 2 workers: under weak scaling the global batch grows with the workers (it
    # is no label), under strong scaling the per-worker batch shrinks (likewise).
    def study(name, throughputs):
        rows = []
        for batch, (one, two) in zip((4, 8), throughputs, strict=True):
            for workers, thr in ((1, one), (2, two)):
                per_worker = batch if scaling == "weak" else batch // workers
                rows += repeats(
                    [thr, thr],
                    num_workers=workers,
                    study=name,
                    scaling=scaling,
                    batch_per_worker=per_worker,
                    global_batch=per_worker * workers,
                )
        return summarize(frame(rows))

    cmp = compare(study("a", [(10, 18), (20, 36)]), study("b", [(12, 22), (24, 40)]))
    lines = format_compare(cmp).splitlines()
    assert lines[1].split()[:2] == ["config", "workers"]
    configs = [line.split()[0] for line in lines[3:]]
    assert configs == [f"{label}=4", f"{label}=4", f"{label}=8", f"{label}=8"]
    assert derived not in format_compare(cmp)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_summary_files_and_plots(tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    rows = repeats([10, 12], num_workers=1) + repeats([20, 22], num_workers=2)
    rows += repeats([36, 38], num_workers=8, num_nodes=2) + repeats([19, 19], num_workers=4)
    write_study(tmp_path, rows)

    assert main([str(tmp_path / "s"), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "throughput (samples/s)" in out and "inter-node eff" in out
    summary_dir = tmp_path / "s" / SUMMARY_DIR
    written = pd.read_parquet(summary_dir / "summary.parquet")
    assert list(written["num_workers"]) == [1, 2, 4, 8]
    assert len(pd.read_csv(summary_dir / "summary.csv")) == 4
    assert "| workers |" in (summary_dir / "summary.md").read_text()
    pngs = sorted(p.name for p in summary_dir.glob("*.png"))
    # breakdown.png and phases.png: the trial rows carry the time breakdown and phase columns
    assert pngs == [
        "breakdown.png",
        "efficiency.png",
        "efficiency_nodes.png",
        "phases.png",
        "speedup.png",
        "throughput.png",
    ]
    for name in pngs:
        assert (summary_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.imread(summary_dir / name).ndim == 3
    assert len(pd.read_parquet(tmp_path / "s")) == len(rows)  # the summary does not pollute the trials
    assert not list(summary_dir.glob(".*"))  # no temporary files left


def test_cli_compare_writes_under_b(tmp_path, capsys):
    write_study(
        tmp_path, repeats([10, 10], num_workers=1, study="a") + repeats([16, 16], num_workers=2, study="a")
    )
    write_study(
        tmp_path, repeats([20, 20], num_workers=1, study="b") + repeats([36, 36], num_workers=2, study="b")
    )

    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "2.25x" in capsys.readouterr().out  # 36 / 16
    cmp = pd.read_csv(tmp_path / "b" / SUMMARY_DIR / "compare.csv")
    assert list(cmp["throughput_ratio"]) == pytest.approx([2.0, 2.25])
    assert (tmp_path / "b" / SUMMARY_DIR / "compare.md").read_text().startswith("# Comparison")


def test_cli_plot_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    write_study(tmp_path, repeats([10, 10], num_workers=1))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([str(tmp_path / "s"), "--plot"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install matplotlib" in err and "tinyfold-ray[plot]" in err
    assert not (tmp_path / "s" / SUMMARY_DIR).exists()


def test_cli_missing_directory_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2  # anything but a user error would raise here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_analysis_modules_import_neither_torch_nor_ray():
    code = (
        "import sys, tinyfold_ray, tinyfold_ray.summary, tinyfold_ray.results.plots\n"
        "from tinyfold_ray import load_results, summarize\n"
        "bad = sorted(m for m in ('torch', 'ray', 'matplotlib') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_cli_usage_errors_are_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "give a RESULTS directory" in err and "usage:" not in err
