"""Synthetic training data with a learnable signal, generated on the training device.

Each sample has a hidden 3-D chain of residues. Its pairwise distances (clipped to 20 Angstrom, the head's
range) are the targets; the pair features are those distances seen through noise, as soft distance bins
plus the sequence separation; the MSA is a random native sequence and mutated copies of it.
DISCREPANCY: TinyOpenFold v1 draws targets independent of the inputs, so its loss cannot fall; here it
does, so every trial shows that training works.
"""

from __future__ import annotations

import torch

from tinyfold_ray.config import ModelConfig
from tinyfold_ray.model.evoformer import MAX_DISTANCE

BOND_LENGTH = 3.8  # Angstrom between consecutive C-alpha atoms
FEATURE_NOISE = 1.0  # Angstrom, std of the noise on the distances the features see
MUTATION_RATE = 0.15
DEFAULT_POOL_SIZE = 8


def _seed_for(seed: int, rank: int) -> int:
    # Distinct, reproducible streams per (seed, rank); the large odd factor keeps (s, r) pairs apart.
    return (seed * 1_000_003 + rank) % (2**63)


def make_batch(cfg: ModelConfig, batch_size: int, generator: torch.Generator, device: torch.device):
    """One batch on `device`: msa_tokens [B, S, R] int64, pair_features [B, R, R, F], target [B, R, R]."""
    b, s, r = batch_size, cfg.num_seqs, cfg.seq_len
    # A random walk with fixed bond length: a crude but real chain geometry.
    steps = torch.randn(b, r, 3, generator=generator, device=device)
    steps = steps / steps.norm(dim=-1, keepdim=True) * BOND_LENGTH
    coords = steps.cumsum(dim=1)
    distances = torch.cdist(coords, coords)  # [B, R, R]
    target = distances.clamp(max=MAX_DISTANCE)

    noisy = distances + FEATURE_NOISE * torch.randn(distances.shape, generator=generator, device=device)
    num_bins = cfg.pair_input_dim - 1
    centers = torch.linspace(0.0, MAX_DISTANCE, num_bins, device=device)
    width = MAX_DISTANCE / max(num_bins - 1, 1)
    bins = torch.exp(-(((noisy.unsqueeze(-1) - centers) / width) ** 2))  # [B, R, R, F-1]
    idx = torch.arange(r, device=device)
    separation = ((idx[None, :] - idx[:, None]).abs().float() / r).expand(b, r, r).unsqueeze(-1)
    pair_features = torch.cat([bins, separation], dim=-1)

    native = torch.randint(0, cfg.vocab_size, (b, 1, r), generator=generator, device=device)
    mutations = torch.randint(0, cfg.vocab_size, (b, s, r), generator=generator, device=device)
    mutate = torch.rand(b, s, r, generator=generator, device=device) < MUTATION_RATE
    msa_tokens = torch.where(mutate, mutations, native.expand(b, s, r))
    return msa_tokens, pair_features, target


class SyntheticData:
    """A pool of batches made once on the device and served in a cycle.

    Nothing crosses host -> device per step, and the generator's own cost stays out of the timed steps.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        *,
        seed: int,
        rank: int,
        device: torch.device,
        pool_size: int = DEFAULT_POOL_SIZE,
    ):
        generator = torch.Generator(device=device)
        generator.manual_seed(_seed_for(seed, rank))
        self.pool = [make_batch(cfg, batch_size, generator, device) for _ in range(pool_size)]
        self._next = 0

    def next_batch(self):
        batch = self.pool[self._next]
        self._next = (self._next + 1) % len(self.pool)
        return batch
