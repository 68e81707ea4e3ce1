import json
import math

import pytest
import torch

from tests.ray_helpers import run_cli
from tinyfold_ray.config import TrainConfig, tiny_model_config
from tinyfold_ray.data import SyntheticData
from tinyfold_ray.errors import TrainingError
from tinyfold_ray.train.cli import main as train_main
from tinyfold_ray.train.loop import run_timed_loop
from tinyfold_ray.train.single import train_single
from tinyfold_ray.train.step import build_training
from tinyfold_ray.train.timing import step_stats

SMALL = tiny_model_config()
CPU = torch.device("cpu")


def test_same_seed_gives_the_same_loss_sequence():
    cfg = TrainConfig(batch_size=2, num_steps=4, warmup_steps=1, seed=7)
    first = train_single(SMALL, cfg, "cpu")["losses"]
    second = train_single(SMALL, cfg, "cpu")["losses"]
    assert first == second


def test_different_rank_or_seed_gives_different_data():
    def first_batch(seed, rank):
        return SyntheticData(SMALL, 2, seed=seed, rank=rank, device=CPU).next_batch()

    same = first_batch(1, 0)
    for a, b in zip(same, first_batch(1, 0), strict=True):
        assert torch.equal(a, b)
    for other in (first_batch(1, 1), first_batch(2, 0)):
        assert not torch.equal(same[1], other[1]) and not torch.equal(same[2], other[2])


def test_targets_come_from_the_features():
    tokens, features, target = SyntheticData(SMALL, 3, seed=0, rank=0, device=CPU).next_batch()
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 4, 16)
    assert features.shape == (3, 16, 16, SMALL.pair_input_dim) and target.shape == (3, 16, 16)
    # The strongest distance bin is an (noisy) estimate of the target distance.
    centers = torch.linspace(0, 20, SMALL.pair_input_dim - 1)
    estimate = centers[features[..., :-1].argmax(-1)]
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    corr = torch.corrcoef(
        torch.stack([estimate[:, off_diagonal].flatten(), target[:, off_diagonal].flatten()])
    )
    assert corr[0, 1] > 0.9


def test_loss_falls_on_a_small_model():
    run = train_single(
        SMALL, TrainConfig(batch_size=4, num_steps=30, warmup_steps=0, learning_rate=3e-3), "cpu"
    )
    losses = run["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu_with_finite_losses(amp):
    run = train_single(SMALL, TrainConfig(batch_size=2, num_steps=3, warmup_steps=1, amp=amp), "cpu")
    assert all(math.isfinite(x) for x in run["losses"])


def test_a_non_finite_loss_stops_the_run_with_a_clear_error():
    training = build_training(SMALL, TrainConfig(batch_size=2, num_steps=3, warmup_steps=0), CPU)

    def exploding_step(batch):
        return training.step(batch) * float("nan")

    with pytest.raises(TrainingError, match="loss became nan at measured step 0"):
        run_timed_loop(exploding_step, training.data, warmup_steps=0, num_steps=3, device=CPU)


def test_throughput_uses_the_slowest_rank_of_each_step():
    stats = step_stats([[1.0, 1.0, 1.0], [2.0, 0.5, 4.0]], global_batch=8)
    # per-step max: [2, 1, 4] -> median 2, mean 7/3
    assert stats["step_time_median_s"] == 2.0
    assert stats["throughput_samples_per_sec"] == 4.0
    assert stats["throughput_mean_samples_per_sec"] == pytest.approx(8 / (7 / 3))


@pytest.fixture
def cli(capsys):
    """`python -m tinyfold_ray.train ARGS`, called in this process: (exit code, stdout, stderr)."""
    return lambda *args: run_cli("tinyfold_ray.train", train_main, list(args), capsys)


def test_cli_writes_json_with_the_documented_keys(tmp_path, cli):
    out = tmp_path / "run.json"
    small = ["--msa-dim", "16", "--pair-dim", "16", "--num-blocks", "1", "--seq-len", "12", "--num-seqs", "4"]
    code, stdout, stderr = cli(
        *small, "--batch-size", "2", "--num-steps", "3", "--warmup-steps", "1", "--json", str(out)
    )
    assert code == 0, stderr
    assert "samples/s" in stdout
    run = json.loads(out.read_text())
    for key in ("num_params", "throughput_samples_per_sec", "step_time_median_s", "first_loss", "last_loss"):
        assert key in run
    assert run["throughput_samples_per_sec"] > 0 and run["backend"] == "cpu"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "-4"], "batch_size=-4"),
        (["--seq-len", "1"], "seq_len=1"),
        (["--amp", "fp8"], "invalid choice: 'fp8'"),
        (["--use-amp", "--amp", "bf16"], "--use-amp means --amp fp16"),
        (["--device", "tpu"], "invalid choice"),
        (["--msa-dim", "30"], "c_m=30"),
    ],
)
def test_cli_bad_flags_give_one_line_and_exit_2(args, message, cli):
    code, _, stderr = cli(*args)  # anything but a user error would raise here, a traceback there
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr


def test_asking_for_a_gpu_that_is_not_there_is_a_user_error(cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, stderr = cli("--device", "cuda", "--num-steps", "1")
    assert code == 2 and "not available here" in stderr


FAST_PATHS = [
    pytest.param({"fused_optimizer": True}, 1e-5, id="fused-adamw"),
    pytest.param({"amp": "bf16"}, 2e-2, id="bf16-autocast"),
    pytest.param({"compile": "default"}, 1e-4, id="torch-compile", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("setting, rtol", FAST_PATHS)
def test_fast_paths_keep_the_losses_of_the_plain_path(setting, rtol):
    base = TrainConfig(batch_size=2, num_steps=5, warmup_steps=1)
    plain = train_single(SMALL, base, "cpu")["losses"]
    fast = train_single(SMALL, TrainConfig(**{**base.__dict__, **setting}), "cpu")["losses"]
    assert fast == pytest.approx(plain, rel=rtol)


# Last in this file: they share the session's Ray with tests/test_trial.py, which runs next.
def test_cli_validate_setup_runs_ray_train_workers_and_reports_each_rank(cli, ray_cluster):
    code, out, stderr = cli("--validate-setup", "--device", "cpu", "--workers", "2")
    assert code == 0, out + stderr
    assert "2 Ray Train worker(s)" in out and "collectives gloo" in out
    rank_rows = [line.split() for line in out.splitlines() if line[:2] in ("0 ", "1 ")]
    assert [row[0] for row in rank_rows] == ["0", "1"]
    assert "all-reduce: sum over 2 rank(s) correct" in out
    assert "DDP: 3 steps on 2 rank(s)" in out
    assert "bus bandwidth, gradient buffer (10.1 MiB)" in out and "bus bandwidth, large buffer" in out
    assert out.rstrip().endswith("setup OK")


def test_cli_validate_setup_exits_1_with_one_line_per_problem(cli, ray_cluster):
    code, out, stderr = cli("--validate-setup", "--device", "cpu", "--workers", "64")
    assert code == 1, out + stderr
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1 and "cannot place the workers: 64 workers" in problems[0]
