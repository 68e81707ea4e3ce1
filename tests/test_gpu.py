"""On one GPU (CUDA or ROCm): every step path (the whole-step CUDA graph too, alone and under DDP in a
one-process NCCL group), a one-worker Ray Train trial and `--validate-setup`.

Marked `gpu` (deselected by default; run with `python -m pytest -m gpu`), skipped where torch sees no
GPU. They need nothing but the GPU and this project's dependencies: Ray is started here with the GPU
count torch reports, so an AMD node passes without amdsmi too.
"""

import socket
from dataclasses import replace

import pandas as pd
import pytest
import torch

from tinyfold_ray.config import DDP_GRAPH_EAGER_STEPS, DDPConfig, TrainConfig, TrialSpec, tiny_model_config
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.train.graphed import GraphedStep
from tinyfold_ray.train.loop import run_timed_loop
from tinyfold_ray.train.single import train_single
from tinyfold_ray.train.step import build_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU"),
]

MODEL = tiny_model_config(seq_len=24)
# Four warm-up steps: compile's CUDA-graph modes record on the second call and replay from the third;
# the whole-step graph captures after three eager steps.
STEPS = TrainConfig(batch_size=2, num_steps=6, warmup_steps=4, seed=7)
GPU_BACKEND = "rocm" if torch.version.hip else "cuda"
# Loss after a few steps, relative to fp32 eager: kernels reordered by the compiler stay close; reduced
# precision moves the loss by up to a few percent on this model.
TOLERANCE = {"none": 1e-3, "bf16": 5e-2, "fp16": 5e-2}


@pytest.fixture(scope="module")
def fp32_eager():
    return train_single(MODEL, STEPS, "auto")


@pytest.mark.parametrize("compile_mode", ["none", "default", "reduce-overhead"])
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_every_amp_and_compile_mode_trains_like_fp32_eager(fp32_eager, amp, compile_mode):
    run = train_single(MODEL, TrainConfig(**{**STEPS.__dict__, "amp": amp, "compile": compile_mode}), "auto")
    assert run["backend"] == GPU_BACKEND
    assert run["fused_optimizer"] is True  # fused AdamW is the GPU default (and fp16 needs it)
    assert run["losses"] == pytest.approx(fp32_eager["losses"], rel=TOLERANCE[amp])
    assert run["peak_memory_bytes"] > 0


@pytest.mark.parametrize("amp, compile_mode", [("none", "none"), ("bf16", "none"), ("bf16", "default")])
def test_the_whole_step_graph_trains_like_fp32_eager(fp32_eager, amp, compile_mode):
    graphed = replace(STEPS, amp=amp, compile=compile_mode, cuda_graph=True)
    run = train_single(MODEL, graphed, "auto")
    assert run["cuda_graph"] is True
    assert run["losses"] == pytest.approx(fp32_eager["losses"], rel=TOLERANCE[amp])


def test_the_timed_steps_are_replays_of_one_captured_graph():
    device = torch.device("cuda", 0)
    training = build_training(MODEL, replace(STEPS, cuda_graph=True), device)
    assert isinstance(training.step, GraphedStep)
    result = run_timed_loop(
        training.step,
        training.data,
        warmup_steps=STEPS.warmup_steps,
        num_steps=STEPS.num_steps,
        device=device,
    )
    assert training.step.captured
    assert len(set(result.losses)) == STEPS.num_steps  # new batches and updated weights in every replay


@pytest.fixture
def nccl_world_of_one():
    """A one-process NCCL (RCCL) group: DDP's all-reduce then runs, and is captured, with no second GPU."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield torch.device("cuda", 0)
    dist.destroy_process_group()


def test_the_whole_step_graph_holds_ddps_all_reduce_in_a_world_of_one(nccl_world_of_one):
    pytest.importorskip("ray")
    from tinyfold_ray.train.worker import ddp_wrapper

    device = nccl_world_of_one
    steps = replace(STEPS, warmup_steps=DDP_GRAPH_EAGER_STEPS + 1)

    def ddp_run(cuda_graph: bool):
        training = build_training(
            MODEL, replace(steps, cuda_graph=cuda_graph), device, wrap_model=ddp_wrapper(DDPConfig(), device)
        )
        result = run_timed_loop(
            training.step,
            training.data,
            warmup_steps=steps.warmup_steps,
            num_steps=steps.num_steps,
            device=device,
        )
        return training, result.losses

    _, eager = ddp_run(False)
    graphed, losses = ddp_run(True)
    assert isinstance(graphed.step, GraphedStep) and graphed.step.captured
    assert losses == pytest.approx(eager, rel=TOLERANCE["none"])
    with pytest.raises(ConfigError, match="needs >= 12 untimed warm-up steps"):
        build_training(
            MODEL, replace(STEPS, cuda_graph=True), device, wrap_model=ddp_wrapper(DDPConfig(), device)
        )


def test_fp16_without_the_fused_optimizer_is_refused_on_the_gpu():
    unfused = TrainConfig(amp="fp16", fused_optimizer=False)
    with pytest.raises(ConfigError, match="amp=fp16 with fused_optimizer=false"):
        build_training(MODEL, unfused, torch.device("cuda", 0))


@pytest.fixture(scope="module")
def ray_with_this_gpu():
    ray = pytest.importorskip("ray")
    from tinyfold_ray.ray_session import embedded_runtime_env

    # The GPU count given explicitly: Ray's own AMD detection needs the amdsmi package.
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=torch.cuda.device_count(),
        include_dashboard=False,
        runtime_env=embedded_runtime_env(),
    )
    yield
    ray.shutdown()


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_one_worker_ray_train_trial_records_the_gpu(ray_with_this_gpu, tmp_path, cuda_graph):
    from tinyfold_ray.train.trial import run_trial

    train = replace(STEPS, cuda_graph=cuda_graph)
    spec = TrialSpec(study="gpu", trial_id="w1", num_workers=1, device=GPU_BACKEND, model=MODEL, train=train)
    outcome = run_trial(spec, str(tmp_path))
    assert outcome.ok, outcome.row["error"]
    row = pd.read_parquet(tmp_path / "gpu").iloc[0]
    assert (row.backend, row.num_gpus) == (GPU_BACKEND, 1)
    assert row.comm_backend == ("rccl" if torch.version.hip else "nccl")
    assert row.device_name == torch.cuda.get_device_name(0)
    assert row.peak_memory_bytes > 0 and row.cuda_graph == cuda_graph
    steps = pd.read_parquet(tmp_path / "gpu" / "_steps")
    assert (steps.peak_memory_bytes > 0).all()


def test_validate_setup_passes_on_this_gpu(ray_with_this_gpu):
    from tinyfold_ray.train.validate import validate_setup

    report = validate_setup("auto", 1)
    assert report.ok, report.text()
    text = report.text()
    assert torch.cuda.get_device_name(0)[:40] in text
    assert "all-reduce: sum over 1 rank(s) correct" in text
