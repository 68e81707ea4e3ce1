"""The FLOP count per sample against torch's own FLOP counter, and the peak table's lookups."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyfold_ray.config import ModelConfig
from tinyfold_ray.data import SyntheticData
from tinyfold_ray.flops import forward_flops_per_sample, peak_tflops, train_flops_per_sample, utilization
from tinyfold_ray.model import TinyFold


def counted_flops(cfg: ModelConfig, backward: bool) -> float:
    """FLOPs per sample that torch counts when it runs the model on a batch of 2."""
    batch = 2
    msa, pair, _ = SyntheticData(cfg, batch, seed=0, rank=0, device=torch.device("cpu")).next_batch()
    model = TinyFold(cfg)
    with FlopCounterMode(display=False) as counter:
        out = model(msa, pair)
        if backward:
            out.sum().backward()
    return counter.get_total_flops() / batch


def test_forward_count_matches_torch_on_odd_sizes(tiny_model_cfg):
    assert forward_flops_per_sample(tiny_model_cfg) == counted_flops(tiny_model_cfg, backward=False)


def test_training_count_is_three_forwards_and_close_to_what_torch_counts(tiny_model_cfg):
    # The input gradient of the first layer is never computed, so torch counts slightly less.
    counted = counted_flops(tiny_model_cfg, backward=True)
    assert train_flops_per_sample(tiny_model_cfg) == 3 * forward_flops_per_sample(tiny_model_cfg)
    assert counted <= train_flops_per_sample(tiny_model_cfg) <= 1.01 * counted


def test_default_model_is_66_6_gflop_per_sample():
    assert train_flops_per_sample(ModelConfig()) / 1e9 == pytest.approx(66.6, abs=0.05)


@pytest.mark.parametrize(
    ("name", "amp", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H200", "none", 67.0),
        ("AMD Instinct MI300X", "fp16", 1307.4),
        ("AMD Instinct MI250X/MI250", "bf16", 383.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
        (None, "bf16", None),
    ],
)
def test_peak_tflops_by_device_name_and_precision(name, amp, peak):
    assert peak_tflops(name, amp) == peak


def test_utilization_is_per_device_and_unknown_without_a_known_peak(tiny_model_cfg):
    flops = train_flops_per_sample(tiny_model_cfg)
    one = utilization(tiny_model_cfg, 1e6, "NVIDIA H200", "bf16")
    assert one["achieved_tflops"] == pytest.approx(flops * 1e6 / 1e12)
    assert one["mfu"] == pytest.approx(one["achieved_tflops"] / 989.4)
    eight = utilization(tiny_model_cfg, 1e6, "NVIDIA H200", "bf16", num_devices=8)
    assert eight["mfu"] == pytest.approx(one["mfu"] / 8)
    assert utilization(tiny_model_cfg, 1e6, "AMD EPYC 7763", "none")["mfu"] is None


def test_one_process_json_and_summary_carry_achieved_tflops_and_mfu(tiny_model_cfg, monkeypatch):
    from tinyfold_ray.config import TrainConfig
    from tinyfold_ray.train import single

    train = TrainConfig(batch_size=2, num_steps=2, warmup_steps=0)
    # The CPU has no peak in the table; a known name shows the MFU the summary prints on a GPU.
    monkeypatch.setattr(single, "device_name", lambda device: "NVIDIA H200")
    run = single.train_single(tiny_model_cfg, train, "cpu")
    expected = train_flops_per_sample(tiny_model_cfg) * run["throughput_samples_per_sec"] / 1e12
    assert run["achieved_tflops"] == pytest.approx(expected)
    assert run["mfu"] == pytest.approx(expected / 67.0)  # fp32 peak of an H200
    assert f"MFU {run['mfu'] * 100:.2f} %" in single.format_summary(run)
