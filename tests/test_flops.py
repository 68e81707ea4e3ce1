"""The FLOP count per sample against torch's own FLOP counter, and the peak table's lookups."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyfold_ray.config import ModelConfig
from tinyfold_ray.data import SyntheticData
from tinyfold_ray.flops import forward_flops_per_sample, peak_tflops, train_flops_per_sample
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
