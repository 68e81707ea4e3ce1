"""Device selection without a GPU: the pure parts that decide which GPU a worker uses."""

import pytest

from tinyfold_ray.device import VISIBLE_DEVICE_VARS, comm_backends, gpu_index


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    for var in VISIBLE_DEVICE_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("var", ["CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"])
def test_a_worker_uses_its_assigned_gpu_among_the_visible_ones(monkeypatch, var):
    # Ray shows every worker on a node all the node's GPUs its workers hold; this worker holds "6".
    monkeypatch.setenv(var, "4,6,7")
    assert gpu_index(local_rank=0, assigned_ids=["6"]) == 1
    assert gpu_index(local_rank=2, assigned_ids=["4"]) == 0


def test_without_ray_information_the_local_rank_picks_the_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert gpu_index(local_rank=5) == 1


def test_collective_library_names_never_assume_nvidia():
    assert comm_backends("rocm") == ("nccl", "rccl")
    assert comm_backends("cuda") == ("nccl", "nccl")
    assert comm_backends("cpu") == ("gloo", "gloo")
