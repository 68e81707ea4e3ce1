import pytest

from tinyfold_ray.config import ModelConfig


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    """Odd small sizes, so a transposed or mixed-up axis fails loudly."""
    return ModelConfig(
        c_m=12,
        c_z=20,
        num_blocks=2,
        num_heads_msa=3,
        num_heads_pair=5,
        msa_transition_dim=24,
        pair_transition_dim=28,
        c_opm=6,
        num_seqs=5,
        seq_len=7,
        pair_input_dim=11,
    )
