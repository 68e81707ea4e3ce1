"""Small shared pieces of the Ray tests."""

import contextlib
import os

from tinyfold_ray.config import TrainConfig, tiny_model_config

SMALL_MODEL = tiny_model_config(seq_len=12)
SHORT_TRAINING = TrainConfig(batch_size=2, num_steps=4, warmup_steps=2)

# The model of the end-to-end study files: the smallest that still exercises every module.
TINY_STUDY_MODEL = {
    "c_m": 8,
    "c_z": 8,
    "num_blocks": 1,
    "num_seqs": 3,
    "seq_len": 8,
    "msa_transition_dim": 16,
    "pair_transition_dim": 16,
    "c_opm": 4,
}


@contextlib.contextmanager
def embedded_ray(num_cpus: int = 3):
    """An embedded Ray for one test module, as the study starts it; the process environment is put
    back afterwards, because starting it (and every trial) sets variables that later tests' own
    subprocesses (`ray start`, `ray job submit`) would otherwise inherit."""
    import ray

    from tinyfold_ray.ray_session import connect

    saved = dict(os.environ)
    connect(num_cpus=num_cpus)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
