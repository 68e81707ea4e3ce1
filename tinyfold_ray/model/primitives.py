"""Building blocks shared by the Evoformer modules: bias-free Linear, attention, transitions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    """A bias-free Linear initialised normal(0, 0.02), like every Linear in TinyOpenFold v1."""
    layer = nn.Linear(in_dim, out_dim, bias=False)
    nn.init.normal_(layer.weight, mean=0.0, std=INIT_STD)
    return layer


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel: str = "eager",
) -> torch.Tensor:
    """Softmax attention over the second-to-last axis.

    Args:
        q, k, v: [..., H, L, D]
        bias: broadcastable to [..., H, L, L], added to the logits before the softmax
        kernel: "eager" (matmul + softmax, as the reference) or "sdpa" (torch's fused kernel)
    Returns:
        [..., H, L, D]
    """
    if kernel == "sdpa":
        if bias is not None:
            # sdpa wants the mask at the full batch shape of the scores on some backends.
            bias = bias.expand(*q.shape[:-1], k.shape[-2]).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class MultiHeadAttention(nn.Module):
    """Self-attention over the second-to-last axis of [..., L, c] with bias-free projections.

    DISCREPANCY: q, k and v come from one fused c -> 3c projection instead of three c -> c ones: the
    same parameters and function (each third is initialised like the reference), fewer kernel launches.
    """

    def __init__(self, c: int, num_heads: int, kernel: str = "eager"):
        super().__init__()
        self.num_heads = num_heads
        self.kernel = kernel
        self.qkv = linear(c, 3 * c)
        self.out = linear(c, c)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: [..., L, c]
            bias: broadcastable to [..., H, L, L]
        Returns:
            [..., L, c]
        """
        *lead, length, c = x.shape
        qkv = self.qkv(x).view(*lead, length, 3, self.num_heads, c // self.num_heads)
        # [..., L, 3, H, D] -> 3 x [..., H, L, D]
        q, k, v = qkv.movedim(-4, -2).unbind(-4)
        o = attention(q, k, v, bias, self.kernel)
        # [..., H, L, D] -> [..., L, H * D]
        return self.out(o.transpose(-2, -3).reshape(*lead, length, c))


class Transition(nn.Module):
    """Position-wise feed-forward: c -> hidden -> c with ReLU."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.up = linear(c, hidden)
        self.down = linear(hidden, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., c] -> [..., c]"""
        return self.down(torch.relu(self.up(x)))
