"""Device selection without a GPU: which ordinal a worker uses under every way a node sets visibility.

Each case gives the variables as Ray (or SLURM, or a user) sets them, and the device count the runtime
would report; on ROCm the count also tells which of HIP_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES the HIP
runtime obeyed, so the AMD layouts are checked under both answers.
"""

import pytest
import torch

from tinyfold_ray.device import (
    VISIBLE_DEVICE_VARS,
    DeviceChoiceError,
    choose_gpu_ordinal,
    comm_backends,
    comm_library_version,
    gpu_index,
    provenance,
)


def ordinal(env, count, assigned=(), local_rank=0, rocm=False):
    return choose_gpu_ordinal(
        local_rank=local_rank, assigned_ids=list(assigned), device_count=count, env=env, rocm=rocm
    )


def ray_amd_layout(node_gpus: list[str], own: str) -> dict[str, str]:
    """Ray core: HIP_VISIBLE_DEVICES = the worker's own GPU; Ray Train: CUDA_VISIBLE_DEVICES = the union."""
    return {"HIP_VISIBLE_DEVICES": own, "CUDA_VISIBLE_DEVICES": ",".join(node_gpus)}


@pytest.mark.parametrize("workers_per_node", [1, 2, 8])
@pytest.mark.parametrize("hip_wins", [True, False], ids=["HIP-honoured", "CUDA-honoured"])
def test_ray_amd_layout_gives_each_worker_its_own_gpu(workers_per_node, hip_wins):
    node_gpus = [str(i) for i in range(workers_per_node)]
    chosen = []
    for local_rank, own in enumerate(node_gpus):
        env = ray_amd_layout(node_gpus, own)
        # HIP honoured: the process sees its own GPU only; CUDA honoured: the whole union.
        count = 1 if hip_wins else workers_per_node
        index = ordinal(env, count, [own], local_rank=local_rank, rocm=True)
        assert 0 <= index < count
        chosen.append(node_gpus[index] if not hip_wins else own)
        if not hip_wins:
            assert index == local_rank  # the union is in id order here
    assert chosen == node_gpus  # every worker on its own physical GPU


def test_ray_amd_layout_with_ids_out_of_rank_order():
    # Ray hands out ids in any order: local rank 0 may hold GPU 6 of the union 4,6,7.
    env = ray_amd_layout(["4", "6", "7"], "6")
    assert ordinal(env, 3, ["6"], local_rank=0, rocm=True) == 1
    assert ordinal(env, 1, ["6"], local_rank=0, rocm=True) == 0


def test_nvidia_layout_indexes_the_union_and_ignores_hip_variables():
    env = {"CUDA_VISIBLE_DEVICES": "2,3,5", "HIP_VISIBLE_DEVICES": "5"}
    assert ordinal(env, 3, ["5"], rocm=False) == 2


def test_rocr_only_numbers_devices_by_local_rank():
    # SLURM on an AMD node: ROCR_VISIBLE_DEVICES only, no Ray GPU ids (e.g. --validate-setup by hand).
    env = {"ROCR_VISIBLE_DEVICES": "4,5"}
    assert [ordinal(env, 2, local_rank=r, rocm=True) for r in (0, 1)] == [0, 1]
    # With Ray ids in ROCR's numbering, the id's position among ROCR's devices.
    assert ordinal(env, 2, ["5"], rocm=True) == 1


def test_a_users_own_cuda_visible_devices():
    # The user started Ray with CUDA_VISIBLE_DEVICES=2,3: Ray's ids are the physical 2 and 3.
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert ordinal(env, 2, ["3"]) == 1
    assert ordinal(env, 2, local_rank=1) == 1  # outside Ray: by local rank
    assert ordinal(env, 2, ["3"], rocm=True) == 1  # on ROCm CUDA_VISIBLE_DEVICES alone acts like HIP's


def test_fractional_gpus_share_one_ordinal():
    # Two workers holding half a GPU each: both were given id "1"; the union is just "1".
    for local_rank in (0, 1):
        env = ray_amd_layout(["1"], "1")
        assert ordinal(env, 1, ["1"], local_rank=local_rank, rocm=True) == 0
        assert ordinal({"CUDA_VISIBLE_DEVICES": "1"}, 1, ["1"], local_rank=local_rank) == 0


def test_no_variables_set_uses_the_physical_id():
    assert ordinal({}, 8, ["6"]) == 6


@pytest.mark.parametrize(
    "env, count, assigned, local_rank, rocm",
    [
        # HIP and CUDA lists both disagree with the count the runtime reports.
        ({"HIP_VISIBLE_DEVICES": "3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2, ["3"], 0, True),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 2, ["5"], 0, False),  # own id not visible
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, 0, ["0"], 0, False),  # no device at all
        ({}, 4, [], 5, False),  # more local ranks than devices outside Ray
        ({}, 2, ["6"], 0, False),  # an id beyond the devices
    ],
)
def test_an_ordinal_that_cannot_be_right_is_one_line_naming_the_variables(
    env, count, assigned, local_rank, rocm
):
    with pytest.raises(DeviceChoiceError) as e:
        ordinal(env, count, assigned, local_rank=local_rank, rocm=rocm)
    message = str(e.value)
    assert "\n" not in message
    for var in VISIBLE_DEVICE_VARS:
        assert var in message
    for name, value in env.items():
        assert f"{name}={value!r}" in message
    assert f"sees {count} device(s)" in message


def test_gpu_index_asks_torch_what_it_sees(monkeypatch):
    for var in VISIBLE_DEVICE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setattr(torch.version, "hip", "6.4.0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_index(local_rank=3, assigned_ids=["3"]) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert gpu_index(local_rank=3, assigned_ids=["3"]) == 3
    monkeypatch.setattr(torch.version, "hip", None)  # CUDA torch: HIP_VISIBLE_DEVICES means nothing
    assert gpu_index(local_rank=3, assigned_ids=["3"]) == 3


def test_collective_library_names_never_assume_nvidia():
    assert comm_backends("rocm") == ("nccl", "rccl")
    assert comm_backends("cuda") == ("nccl", "nccl")
    assert comm_backends("cpu") == ("gloo", "gloo")


def test_the_collective_library_version_is_none_on_a_cpu_build_and_dotted_on_a_gpu_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert comm_library_version() is None and provenance()["comm_library_version"] is None
    monkeypatch.setattr(torch.version, "hip", "6.4.0")  # ROCm: torch.cuda.nccl reports RCCL
    monkeypatch.setattr(torch.cuda.nccl, "version", lambda: (2, 21, 5))
    assert comm_library_version() == "2.21.5" and provenance()["comm_library_version"] == "2.21.5"

    def missing():  # what a build without the NCCL binding does
        raise AttributeError("module 'torch._C' has no attribute '_nccl_version'")

    monkeypatch.setattr(torch.cuda.nccl, "version", missing)
    assert comm_library_version() is None
