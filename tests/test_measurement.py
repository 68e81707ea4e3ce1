"""The measurement protocol without Ray: warm-up rule, loss averaging, per-rank compute and replicas."""

from datetime import datetime, timezone

import pytest
import torch

from tinyfold_ray.config import DDP_WARMUP_STEPS, TrainConfig, TrialSpec, tiny_model_config
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.model import TinyFold
from tinyfold_ray.train.timing import LOSS_WINDOW_STEPS, loss_window
from tinyfold_ray.train.trial import build_outcome, replica_divergence
from tinyfold_ray.train.worker import common_batch_loss

MODEL = tiny_model_config(num_heads_msa=3, c_m=12, c_z=20, num_heads_pair=5, seq_len=7, num_seqs=3)
CPU = torch.device("cpu")


@pytest.mark.parametrize("warmup", range(DDP_WARMUP_STEPS))
def test_ddp_trials_refuse_fewer_than_two_warmup_steps_in_one_line(warmup):
    with pytest.raises(ConfigError) as e:
        TrialSpec(num_workers=2, train=TrainConfig(warmup_steps=warmup))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"warmup_steps={warmup} is not allowed") and "DDP" in message
    # One worker has no DDP; two warm-up steps are enough with any number of workers.
    assert TrialSpec(num_workers=1, train=TrainConfig(warmup_steps=warmup)).train.warmup_steps == warmup
    assert TrialSpec(num_workers=8, train=TrainConfig(warmup_steps=DDP_WARMUP_STEPS)).num_workers == 8


def test_the_loss_window_is_a_quarter_of_the_steps_between_one_and_its_cap():
    assert [loss_window(n) for n in (1, 3, 4, 8, 12)] == [1, 1, 1, 2, 3]
    assert loss_window(1000) == LOSS_WINDOW_STEPS


def _record(rank, *, losses, reference, common_loss, host="node-a", comm="gloo"):
    steps = len(losses)
    return {
        "world_rank": rank,
        "local_rank": rank,
        "node_id": "n0",
        "hostname": host,
        "device_name": "cpu",
        "backend": "cpu",
        "comm_backend": comm,
        "num_params": 10,
        "fused_optimizer": False,
        "step_times_s": [0.5] * steps,
        "losses": losses,
        "compute_time_s": [0.3] * steps,
        "comm_exposed_s": [0.1] * steps,
        "optimizer_time_s": [0.05] * steps,
        "compute_reference_s": reference,
        "common_batch_loss": common_loss,
        "profile_path": None,
        "peak_memory_bytes": None,
        "allreduce_time_s": 0.02,
        "allreduce_latency_s": 1e-4,
        "allreduce_s_per_byte": 2e-9,
        "torch_version": torch.__version__,
        "ray_version": "2.60",
        "python_version": "3.12",
        "cuda_version": None,
        "hip_version": None,
        "comm_library_version": "2.21.5",
        "node_gpus": 0,
    }


def _outcome(records, run_order=None):
    train = TrainConfig(num_steps=8, batch_size=2)
    spec = TrialSpec(num_workers=len(records), run_order=run_order, train=train)
    now = datetime.now(timezone.utc)
    return build_outcome(spec, records, None, False, now, now, 10.0, None)


# A short noisy run whose loss falls: its very last step happens to sit above its very first.
NOISY_FALLING = [[5.0, 7.0, 6.0, 5.5, 5.0, 4.8, 4.6, 5.2], [6.0, 6.5, 5.9, 5.4, 5.1, 4.7, 4.5, 4.9]]


def test_first_and_final_loss_are_means_over_k_steps_and_every_rank():
    row = _outcome([_record(r, losses=NOISY_FALLING[r], reference=0.3, common_loss=2.0) for r in (0, 1)]).row
    k = loss_window(8)  # 2
    assert row["first_loss"] == pytest.approx((5.0 + 7.0 + 6.0 + 6.5) / (2 * k))
    assert row["final_loss"] == pytest.approx((4.6 + 5.2 + 4.5 + 4.9) / (2 * k))
    assert row["final_loss"] < row["first_loss"]  # rank 0's last step alone (5.2 >= 5.0) said it did not fall


def test_the_rank_that_computes_slowest_is_named_with_its_host():
    references = [0.30, 0.45, 0.31, 0.29]
    records = [
        _record(r, losses=[1.0] * 8, reference=t, common_loss=2.0, host=f"node-{r}")
        for r, t in enumerate(references)
    ]
    outcome = _outcome(records)
    row = outcome.row
    assert row["load_imbalance"] == pytest.approx(0.45 / 0.30)  # over the median of the other three
    assert (row["slowest_rank"], row["slowest_rank_host"]) == (1, "node-1")
    # With two ranks the other rank is the reference: 3x slower reads 3.0, not the 1.5 of the median.
    pair = _outcome(
        [_record(r, losses=[1.0] * 8, reference=t, common_loss=2.0) for r, t in enumerate((0.1, 0.3))]
    )
    assert pair.row["load_imbalance"] == pytest.approx(3.0)
    # Each rank's own reference on every one of its step rows.
    by_rank = {(s["world_rank"], s["compute_reference_s"]) for s in outcome.step_rows}
    assert by_rank == set(enumerate(references))


def test_one_worker_has_no_imbalance_and_no_replica_check():
    row = _outcome([_record(0, losses=[1.0] * 8, reference=None, common_loss=None)]).row
    assert row["load_imbalance"] is None and row["slowest_rank"] is None and row["slowest_rank_host"] is None
    assert row["replica_divergence"] is None


def test_the_row_records_the_probe_collective_library_gpus_and_run_order():
    records = [_record(r, losses=[1.0] * 8, reference=0.3, common_loss=2.0) for r in (0, 1)]
    row = _outcome(records).row
    assert (row["allreduce_time_s"], row["allreduce_latency_s"], row["allreduce_s_per_byte"]) == (
        0.02,
        1e-4,
        2e-9,
    )
    assert row["comm_library_version"] is None  # gloo uses no NCCL, whatever torch was built with
    assert row["node_gpus"] == 0  # a CPU trial
    nccl = [{**r, "comm_backend": "nccl"} for r in records]
    assert _outcome(nccl).row["comm_library_version"] == "2.21.5"
    assert _outcome(records, run_order=3).row["run_order"] == 3


def test_replica_divergence_is_zero_for_equal_replicas_and_positive_for_diverged_ones():
    torch.manual_seed(3)
    model = TinyFold(MODEL)
    twin = TinyFold(MODEL)
    twin.load_state_dict(model.state_dict())
    same = [common_batch_loss(m, MODEL, 2, seed=11, device=CPU) for m in (model, twin)]
    assert replica_divergence(same) == 0.0

    with torch.no_grad():  # a replica whose updates went astray
        for p in twin.parameters():
            p.mul_(1.1)
    diverged = [common_batch_loss(m, MODEL, 2, seed=11, device=CPU) for m in (model, twin)]
    assert diverged[0] == same[0]  # the common batch does not depend on the call
    assert replica_divergence(diverged) > 1e-4
    assert replica_divergence([2.0]) is None and replica_divergence([2.0, None]) is None

    records = [
        _record(r, losses=[1.0] * 8, reference=0.3, common_loss=loss) for r, loss in enumerate(diverged)
    ]
    assert _outcome(records).row["replica_divergence"] == replica_divergence(diverged)
