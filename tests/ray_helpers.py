"""Small shared pieces of the Ray tests."""

from tinyfold_ray.config import ModelConfig, TrainConfig

SMALL_MODEL = ModelConfig(
    c_m=16,
    c_z=16,
    num_blocks=1,
    num_seqs=4,
    seq_len=12,
    msa_transition_dim=32,
    pair_transition_dim=32,
    c_opm=8,
)
SHORT_TRAINING = TrainConfig(batch_size=2, num_steps=4, warmup_steps=1)
