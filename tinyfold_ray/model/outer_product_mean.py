"""Outer product mean (AF2 Algorithm 10): the MSA track's update to the pair track."""

from __future__ import annotations

import torch
from torch import nn

from tinyfold_ray.model.primitives import linear


class OuterProductMean(nn.Module):
    def __init__(self, c_m: int, c_z: int, c_opm: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(c_m, eps=eps)
        self.proj = linear(c_m, c_opm)
        self.out = linear(c_opm * c_opm, c_z)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        """
        Args:
            msa: [B, S, R, c_m]
        Returns:
            [B, R, R, c_z]
        """
        a = self.proj(self.norm(msa))  # [B, S, R, c_opm]
        num_seqs = msa.shape[-3]
        # mean over s of a[s, i, :] (x) a[s, j, :] -> [B, R, R, c_opm, c_opm]
        outer = torch.einsum("bsic,bsjd->bijcd", a, a) / num_seqs
        return self.out(outer.flatten(-2))
