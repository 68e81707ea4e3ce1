"""The Evoformer block (AF2 Algorithm 6) and the TinyOpenFold v1 model around it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyfold_ray.config import ModelConfig
from tinyfold_ray.model.msa import MSAColumnAttention, MSARowAttentionWithPairBias
from tinyfold_ray.model.outer_product_mean import OuterProductMean
from tinyfold_ray.model.primitives import INIT_STD, Transition, linear
from tinyfold_ray.model.triangle import TriangleAttention, TriangleMultiplication

MAX_DISTANCE = 20.0  # Angstrom: the head predicts sigmoid(x) * MAX_DISTANCE


class EvoformerBlock(nn.Module):
    """One block: three MSA updates, then the outer product mean and five pair updates.

    Every update is pre-LayerNorm + residual. As in TinyOpenFold v1, the triangle modules normalise
    again inside, the outer product mean has only its own LayerNorm, and the pair bias of row attention
    reads the un-normed pair.
    DISCREPANCY: TinyOpenFold v1 also builds a `pair_norm_outer` LayerNorm that it never calls; it is
    left out, so every parameter gets a gradient and DDP never needs find_unused_parameters.
    """

    def __init__(
        self,
        *,
        c_m: int,
        c_z: int,
        num_heads_msa: int,
        num_heads_pair: int,
        msa_transition_dim: int,
        pair_transition_dim: int,
        c_opm: int,
        eps: float = 1e-5,
        kernel: str = "eager",
    ):
        super().__init__()
        self.norm_msa_row = nn.LayerNorm(c_m, eps=eps)
        self.msa_row = MSARowAttentionWithPairBias(c_m, c_z, num_heads_msa, kernel)
        self.norm_msa_col = nn.LayerNorm(c_m, eps=eps)
        self.msa_col = MSAColumnAttention(c_m, num_heads_msa, kernel)
        self.norm_msa_transition = nn.LayerNorm(c_m, eps=eps)
        self.msa_transition = Transition(c_m, msa_transition_dim)

        self.outer_product_mean = OuterProductMean(c_m, c_z, c_opm, eps)
        self.norm_tri_mul_out = nn.LayerNorm(c_z, eps=eps)
        self.tri_mul_out = TriangleMultiplication(c_z, outgoing=True, eps=eps)
        self.norm_tri_mul_in = nn.LayerNorm(c_z, eps=eps)
        self.tri_mul_in = TriangleMultiplication(c_z, outgoing=False, eps=eps)
        self.norm_tri_att_start = nn.LayerNorm(c_z, eps=eps)
        self.tri_att_start = TriangleAttention(c_z, num_heads_pair, starting=True, eps=eps, kernel=kernel)
        self.norm_tri_att_end = nn.LayerNorm(c_z, eps=eps)
        self.tri_att_end = TriangleAttention(c_z, num_heads_pair, starting=False, eps=eps, kernel=kernel)
        self.norm_pair_transition = nn.LayerNorm(c_z, eps=eps)
        self.pair_transition = Transition(c_z, pair_transition_dim)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            msa: [B, S, R, c_m]
            pair: [B, R, R, c_z]
        Returns:
            msa [B, S, R, c_m], pair [B, R, R, c_z]
        """
        msa = msa + self.msa_row(self.norm_msa_row(msa), pair)
        msa = msa + self.msa_col(self.norm_msa_col(msa))
        msa = msa + self.msa_transition(self.norm_msa_transition(msa))

        pair = pair + self.outer_product_mean(msa)
        pair = pair + self.tri_mul_out(self.norm_tri_mul_out(pair))
        pair = pair + self.tri_mul_in(self.norm_tri_mul_in(pair))
        pair = pair + self.tri_att_start(self.norm_tri_att_start(pair))
        pair = pair + self.tri_att_end(self.norm_tri_att_end(pair))
        pair = pair + self.pair_transition(self.norm_pair_transition(pair))
        return msa, pair


class TinyFold(nn.Module):
    """Embeddings, the Evoformer stack and a distance head: TinyOpenFold v1 at default sizes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.msa_embedding = nn.Embedding(cfg.vocab_size, cfg.c_m)
        nn.init.normal_(self.msa_embedding.weight, mean=0.0, std=INIT_STD)
        self.pair_embedding = linear(cfg.pair_input_dim, cfg.c_z)
        self.blocks = nn.ModuleList(
            EvoformerBlock(
                c_m=cfg.c_m,
                c_z=cfg.c_z,
                num_heads_msa=cfg.num_heads_msa,
                num_heads_pair=cfg.num_heads_pair,
                msa_transition_dim=cfg.msa_transition_dim,
                pair_transition_dim=cfg.pair_transition_dim,
                c_opm=cfg.c_opm,
                eps=cfg.layer_norm_eps,
                kernel=cfg.attention,
            )
            for _ in range(cfg.num_blocks)
        )
        self.distance_head = linear(cfg.c_z, 1)

    def forward(self, msa_tokens: torch.Tensor, pair_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            msa_tokens: [B, S, R] integer tokens
            pair_features: [B, R, R, pair_input_dim]
        Returns:
            predicted distances [B, R, R] in Angstrom, in (0, 20)
        """
        msa = self.msa_embedding(msa_tokens)
        pair = self.pair_embedding(pair_features)
        for block in self.blocks:
            msa, pair = block(msa, pair)
        return torch.sigmoid(self.distance_head(pair).squeeze(-1)) * MAX_DISTANCE


def distance_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and target distances, both [B, R, R], computed in fp32."""
    return F.mse_loss(predicted.float(), target.float())


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
