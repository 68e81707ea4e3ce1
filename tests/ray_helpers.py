"""Small shared pieces of the Ray tests, and the one embedded Ray that the session's tests share."""

import contextlib
import sys
from collections.abc import Callable

from tinyfold_ray.cli import run_main
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

# The shared cluster's size: a 2-core machine's embedded cluster (2 cores + the spare for trial
# drivers), on any machine, so that what fits and what is refused does not depend on the machine.
SHARED_CPUS = 3


def start_shared_ray() -> None:
    """The session's embedded Ray, started as a study starts it (ray_session.connect) on first use.

    Each start costs seconds, so tests that run trials share it: conftest.py stops it only when the next
    test does not ask for it (`ray_cluster`), so that no test finds a Ray it did not ask for. The CLIs
    called in-process join it (connect reuses an initialised Ray)."""
    import ray

    from tinyfold_ray.ray_session import connect

    if not ray.is_initialized():
        connect(num_cpus=SHARED_CPUS)


def stop_shared_ray() -> None:
    """Stop whatever Ray this process has initialised (the shared one, or one a test left behind)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def embedded_ray(num_cpus: int = SHARED_CPUS):
    """For a module's own `ray_cluster` fixture: the session's shared embedded Ray (see above)."""
    assert num_cpus == SHARED_CPUS, f"the shared embedded Ray has {SHARED_CPUS} CPUs"
    start_shared_ray()
    yield


def run_cli(prog: str, main: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a CLI's `main` in this process as `python -m prog argv...` runs it: (exit code, stdout,
    stderr). A user error is one line on stderr and exit code 2 (run_main, argparse), as there."""
    capsys.readouterr()
    try:
        code = run_main(prog, lambda: main(argv))
    except SystemExit as e:  # argparse: --help, or a bad flag
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
