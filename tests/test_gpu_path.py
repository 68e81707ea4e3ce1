"""The GPU step paths and the setup check, decided without a GPU: what is refused and what is reported."""

import pytest
import torch

from tinyfold_ray.config import TrainConfig, TrialSpec, tiny_model_config
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.train.step import build_training, check_fp16_without_sync
from tinyfold_ray.train.validate import bus_bandwidth, find_problems, gradient_bytes


@pytest.mark.parametrize("mode, needed", [("default", 1), ("reduce-overhead", 3), ("max-autotune", 3)])
def test_compile_needs_warmup_steps_so_no_timed_step_compiles(mode, needed):
    with pytest.raises(ConfigError, match=f"needs >= {needed} untimed warm-up"):
        TrainConfig(compile=mode, warmup_steps=needed - 1)
    assert TrainConfig(compile=mode, warmup_steps=needed).warmup_steps == needed
    assert TrainConfig(compile="none", warmup_steps=0).warmup_steps == 0


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_are_refused_with_ddp_and_allowed_alone(mode):
    train = TrainConfig(compile=mode, warmup_steps=3)
    with pytest.raises(ConfigError, match="captures CUDA graphs, which this DDP training"):
        TrialSpec(num_workers=2, train=train)
    assert TrialSpec(num_workers=1, train=train).train.compile == mode
    ddp_ok = TrainConfig(compile="max-autotune-no-cudagraphs", warmup_steps=2)
    assert TrialSpec(num_workers=8, train=ddp_ok).num_workers == 8


def test_fp16_on_a_gpu_without_the_fused_optimizer_is_refused():
    gpu = torch.device("cuda", 0)  # a device object needs no GPU
    with pytest.raises(ConfigError, match="amp=fp16 with fused_optimizer=false"):
        check_fp16_without_sync("fp16", False, gpu)
    check_fp16_without_sync("fp16", True, gpu)
    check_fp16_without_sync("bf16", False, gpu)
    check_fp16_without_sync("fp16", False, torch.device("cpu"))  # CPU ops are synchronous anyway


def test_fp16_without_fused_optimizer_still_trains_on_cpu():
    training = build_training(
        tiny_model_config(), TrainConfig(amp="fp16", fused_optimizer=False), torch.device("cpu")
    )
    assert torch.isfinite(training.step(training.data.next_batch()))


def test_bus_bandwidth_is_nccl_tests_definition():
    algbw, busbw = bus_bandwidth(8 * 10**9, 2.0, 8)
    assert algbw == pytest.approx(4e9)
    assert busbw == pytest.approx(4e9 * 2 * 7 / 8)
    assert bus_bandwidth(10**9, 1.0, 2)[1] == pytest.approx(1e9)
    assert gradient_bytes() == 4 * 2_652_736  # the default model's fp32 gradient


def _record(rank, ordinal, *, node="n1", total=3.0, checksum=1.5, error=None):
    return {
        "world_rank": rank,
        "local_rank": rank,
        "node_id": node,
        "hostname": f"host-{node}",
        "ordinal": ordinal,
        "visible": {"HIP_VISIBLE_DEVICES": str(ordinal), "CUDA_VISIBLE_DEVICES": "0,1"},
        "allreduce_sum": total,
        "comm_backend": "rccl",
        "losses": [3.0, 2.0],
        "param_checksum": checksum,
        "error": error,
    }


def test_a_healthy_setup_has_no_problems():
    assert find_problems([_record(0, 0), _record(1, 1)], use_gpu=True) == []
    # The same ordinal on two nodes is two GPUs.
    assert find_problems([_record(0, 0, node="a"), _record(1, 0, node="b")], use_gpu=True) == []


def test_each_problem_is_one_line_naming_what_is_wrong():
    records = [  # three ranks: the all-reduce of 1 + 2 + 3 must give 6 everywhere
        _record(0, 0, total=6.0),
        _record(1, 0, total=5.0, checksum=2.5),
        _record(2, 2, total=6.0, error="TrainingError: loss became nan"),
    ]
    problems = find_problems(records, use_gpu=True)
    assert len(problems) == 4, problems
    assert all("\n" not in p for p in problems)
    text = " | ".join(problems)
    assert "rank 2 on host-n1: TrainingError: loss became nan" in text
    assert "rank 1: all-reduce summed to 5, expected 6" in text
    assert "ranks 0 and 1 on host-n1 both use GPU ordinal 0" in text and "HIP_VISIBLE_DEVICES=0" in text
    assert "DDP replicas differ" in text


def _run(throughput):
    return {
        "throughput_samples_per_sec": throughput,
        "step_time_median_s": 4 / throughput,
        "peak_memory_bytes": 2**30,
        "warmup_time_s": 30.0,
    }


def test_the_gpu_check_times_the_matrix_with_the_fastest_compile_mode_and_says_what_it_skipped():
    from tinyfold_ray.bench.gpu import SKIPPED, fastest_mode, one_process_rows

    runs = {
        ("none", 4, "none"): _run(10.0),
        ("bf16", 4, "default"): _run(30.0),
        ("bf16", 4, "reduce-overhead"): _run(40.0),
        ("none", 4, "reduce-overhead"): "failed: RuntimeError: boom",
    }
    assert fastest_mode(runs) == "reduce-overhead"
    rows = {r.figure: r.value for r in one_process_rows(runs)}
    assert len([f for f in rows if ", batch " in f]) == 9  # 8 cells, bf16 batch 4 in both modes
    assert rows["one process, bf16, compile reduce-overhead (fastest), batch 4"].startswith("40.0 samples/s")
    assert (
        rows["one process, fp32, compile reduce-overhead (fastest), batch 4"] == "failed: RuntimeError: boom"
    )
    assert rows["one process, fp32, eager, batch 8"] == SKIPPED
    assert fastest_mode({("bf16", 4, "default"): "timed out after 100 s"}) is None


def test_the_gpu_check_refuses_a_machine_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from tinyfold_ray.bench.__main__ import main

    assert main(["gpu"]) == 2  # `python -m tinyfold_ray.bench gpu`, in this process
    assert "torch sees no GPU here" in capsys.readouterr().err
