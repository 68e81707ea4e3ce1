"""Pair-track triangle updates (AF2 Algorithms 11-14).

Each class covers both variants of its algorithm with a flag: the ending-node / incoming variant is
the starting-node / outgoing one applied to the transposed pair (a test pins that identity).
"""

from __future__ import annotations

import torch
from torch import nn

from tinyfold_ray.model.primitives import MultiHeadAttention, linear


class TriangleMultiplication(nn.Module):
    """Gated triangle multiplicative update, outgoing (z_ij += sum_k a_ik b_jk) or incoming (a_ki b_kj).

    DISCREPANCY: the five c_z -> c_z projections that read the normed pair (left, right, their gates and
    the output gate) are one fused c_z -> 5 c_z Linear: the same parameters, one kernel instead of five.
    """

    def __init__(self, c_z: int, outgoing: bool = True, eps: float = 1e-5):
        super().__init__()
        self.outgoing = outgoing
        self.norm = nn.LayerNorm(c_z, eps=eps)
        self.proj = linear(c_z, 5 * c_z)
        self.out = linear(c_z, c_z)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """[B, R, R, c_z] -> [B, R, R, c_z]"""
        z = self.norm(pair)
        left, right, left_gate, right_gate, out_gate = self.proj(z).chunk(5, dim=-1)
        a = left * torch.sigmoid(left_gate)
        b = right * torch.sigmoid(right_gate)
        if self.outgoing:
            update = torch.einsum("bikc,bjkc->bijc", a, b)
        else:
            update = torch.einsum("bkic,bkjc->bijc", a, b)
        return self.out(update) * torch.sigmoid(out_gate)


class TriangleAttention(nn.Module):
    """Triangle self-attention around the starting node (rows of the pair) or the ending node (columns).

    As in TinyOpenFold v1: plain softmax attention, no triangle bias, no gating.
    """

    def __init__(
        self, c_z: int, num_heads: int, starting: bool = True, eps: float = 1e-5, kernel: str = "eager"
    ):
        super().__init__()
        self.starting = starting
        self.norm = nn.LayerNorm(c_z, eps=eps)
        self.attn = MultiHeadAttention(c_z, num_heads, kernel)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        """[B, R, R, c_z] -> [B, R, R, c_z]"""
        z = self.norm(pair)
        if self.starting:
            return self.attn(z)
        return self.attn(z.transpose(-2, -3)).transpose(-2, -3)
