"""FLOPs of one training sample, from the model configuration, and the peak FLOP/s of known GPUs.

Pure Python (no torch), so the summary can use it on a laptop. Only matrix products count (Linear
layers, attention's two products, the outer product and the triangle einsums), as in the usual
model-FLOP-utilisation accounting: a multiply-add is 2 FLOPs; normalisation, softmax, activations and
the optimiser are left out (under 1 % here). Backward is counted as twice the forward, the usual
convention (one product for the input gradient, one for the weight gradient).
"""

from __future__ import annotations

from typing import Any

from tinyfold_ray.config import ModelConfig

BACKWARD_PER_FORWARD = 2


def _linear(rows: int, d_in: int, d_out: int) -> int:
    return 2 * rows * d_in * d_out


def _self_attention(batch: int, length: int, c: int) -> int:
    """FLOPs of MultiHeadAttention over [batch, length, c]: fused q/k/v, q k^T, softmax(..) v, output.

    The heads split c, so the two products cost 2 * length^2 * c per row whatever the head count.
    """
    rows = batch * length
    return _linear(rows, c, 3 * c) + 2 * (2 * batch * length * length * c) + _linear(rows, c, c)


def forward_flops_per_sample(cfg: ModelConfig) -> int:
    """Matrix-product FLOPs of one sample's forward pass through `TinyFold(cfg)`."""
    s, r, c_m, c_z, c_o = cfg.num_seqs, cfg.seq_len, cfg.c_m, cfg.c_z, cfg.c_opm
    pairs = r * r
    msa = (
        _self_attention(s, r, c_m)  # row attention: each sequence over residues
        + _linear(pairs, c_z, cfg.num_heads_msa)  # its pair bias
        + _self_attention(r, s, c_m)  # column attention: each residue over sequences
        + _linear(s * r, c_m, cfg.msa_transition_dim)
        + _linear(s * r, cfg.msa_transition_dim, c_m)
    )
    outer_product_mean = _linear(s * r, c_m, c_o) + 2 * pairs * s * c_o * c_o + _linear(pairs, c_o * c_o, c_z)
    triangle_multiplication = _linear(pairs, c_z, 5 * c_z) + 2 * pairs * r * c_z + _linear(pairs, c_z, c_z)
    triangle_attention = _self_attention(r, r, c_z)
    pair_transition = _linear(pairs, c_z, cfg.pair_transition_dim) + _linear(
        pairs, cfg.pair_transition_dim, c_z
    )
    block = msa + outer_product_mean + 2 * triangle_multiplication + 2 * triangle_attention + pair_transition
    embeddings_and_head = _linear(pairs, cfg.pair_input_dim, c_z) + _linear(pairs, c_z, 1)
    return cfg.num_blocks * block + embeddings_and_head


def train_flops_per_sample(cfg: ModelConfig) -> int:
    """Forward plus backward FLOPs of one training sample (66.6 GFLOP at TinyOpenFold's defaults)."""
    return (1 + BACKWARD_PER_FORWARD) * forward_flops_per_sample(cfg)


# Dense peak TFLOP/s from the vendors' data sheets (no sparsity): (name fragment, {precision: peak}).
# "fp32" is the plain FP32 rate (PyTorch leaves TF32 off for matmuls by default); "bf16"/"fp16" the
# matrix-core rate. More specific names come first: the first fragment found in the device name wins.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"fp32": 67.0, "bf16": 989.4, "fp16": 989.4}),
    ("H100 NVL", {"fp32": 60.0, "bf16": 835.0, "fp16": 835.0}),
    ("H100 PCIe", {"fp32": 51.2, "bf16": 756.5, "fp16": 756.5}),
    ("H100", {"fp32": 67.0, "bf16": 989.4, "fp16": 989.4}),
    ("A100", {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0}),
    ("MI300X", {"fp32": 163.4, "bf16": 1307.4, "fp16": 1307.4}),
    ("MI250X", {"fp32": 95.7, "bf16": 383.0, "fp16": 383.0}),
)


def peak_tflops(device_name: str | None, amp: str) -> float | None:
    """The device's dense peak TFLOP/s at the trial's precision (amp none -> fp32); None if unknown."""
    if not device_name:
        return None
    precision = "fp32" if amp == "none" else amp
    for fragment, peaks in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def utilization(
    cfg: ModelConfig, samples_per_s: float, device_name: str | None, amp: str, num_devices: int = 1
) -> dict[str, Any]:
    """flops_per_sample, achieved_tflops and mfu of a run at `samples_per_s` on `num_devices` devices.

    mfu is per device (a run's throughput is shared by its devices) and None where the peak is unknown.
    """
    flops = train_flops_per_sample(cfg)
    achieved_tflops = flops * samples_per_s / 1e12
    peak = peak_tflops(device_name, amp)
    return {
        "flops_per_sample": float(flops),
        "achieved_tflops": achieved_tflops,
        "mfu": achieved_tflops / (peak * num_devices) if peak else None,
    }
