"""MSA-track attention (AF2 Algorithms 7 and 8): row attention with pair bias, column attention."""

from __future__ import annotations

import torch
from torch import nn

from tinyfold_ray.model.primitives import MultiHeadAttention, linear


class MSARowAttentionWithPairBias(nn.Module):
    """Attention along residues within each sequence, biased by a projection of the pair track."""

    def __init__(self, c_m: int, c_z: int, num_heads: int, kernel: str = "eager"):
        super().__init__()
        self.attn = MultiHeadAttention(c_m, num_heads, kernel)
        self.pair_bias = linear(c_z, num_heads)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        """
        Args:
            msa: [B, S, R, c_m] (already layer-normed by the block)
            pair: [B, R, R, c_z] (raw, as in the reference)
        Returns:
            [B, S, R, c_m]
        """
        # [B, R, R, H] -> [B, 1, H, R, R]: one bias shared by all S sequences
        bias = self.pair_bias(pair).permute(0, 3, 1, 2).unsqueeze(1)
        return self.attn(msa, bias)


class MSAColumnAttention(nn.Module):
    """Attention across sequences at each residue position."""

    def __init__(self, c_m: int, num_heads: int, kernel: str = "eager"):
        super().__init__()
        self.attn = MultiHeadAttention(c_m, num_heads, kernel)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        """[B, S, R, c_m] -> [B, S, R, c_m]"""
        # Attend over S: put it on the sequence axis, [B, R, S, c_m]
        return self.attn(msa.transpose(-2, -3)).transpose(-2, -3)
