"""The whole-step CUDA graph (`cuda_graph: true`), decided without a GPU: what is refused, where, and how.

Its training runs only on a GPU: tests/test_gpu.py (marked `gpu`) checks its losses against eager.
"""

import contextlib

import pytest
import torch
import yaml

from tinyfold_ray.cli import run_main
from tinyfold_ray.config import TrainConfig, TrialSpec, tiny_model_config
from tinyfold_ray.errors import ConfigError, StudySpecError
from tinyfold_ray.study.spec import load_study, sweep_points
from tinyfold_ray.train import step as step_module
from tinyfold_ray.train.cli import main as train_main
from tinyfold_ray.train.graphed import GraphedStep

GRAPH = TrainConfig(cuda_graph=True, warmup_steps=4)


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"compile": "reduce-overhead"},
            "compile='reduce-overhead' is not allowed: captures CUDA graphs of its own",
        ),
        (
            {"compile": "max-autotune"},
            "compile='max-autotune' is not allowed: captures CUDA graphs of its own",
        ),
        ({"amp": "fp16"}, "amp='fp16' is not allowed: fp16 with cuda_graph=true"),
        ({"warmup_steps": 3}, "needs >= 4 untimed warm-up steps: 3 eager, then the capture"),
    ],
)
def test_settings_a_whole_step_graph_cannot_hold_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(cuda_graph=True, **{"warmup_steps": 4, **settings})
    assert TrainConfig(cuda_graph=True, warmup_steps=4, compile="default", amp="bf16").cuda_graph


def test_a_trial_refuses_the_graph_on_cpu_or_gloo_and_ddp_needs_its_eager_steps_first():
    with pytest.raises(ConfigError, match="CUDA graphs need a GPU .* this trial's device is cpu"):
        TrialSpec(device="cpu", train=GRAPH)
    with pytest.raises(ConfigError, match="not gloo's"):
        TrialSpec(
            device="cuda",
            num_workers=2,
            comm_backend="gloo",
            train=TrainConfig(cuda_graph=True, warmup_steps=12),
        )
    with pytest.raises(ConfigError, match="2 DDP workers needs >= 12 untimed warm-up steps"):
        TrialSpec(device="cuda", num_workers=2, train=GRAPH)
    ddp = TrialSpec(device="cuda", num_workers=8, train=TrainConfig(cuda_graph=True, warmup_steps=12))
    assert ddp.train.cuda_graph and TrialSpec(device="auto", train=GRAPH).train.cuda_graph


def _study(tmp_path, device: str, sweep_graph: bool):
    study = {
        "name": "graphs",
        "resources": {"device": device},
        "train": {"warmup_steps": 4},
        "sweep": {"num_workers": [1], "batch_per_worker": [4, 64]},
    }
    if sweep_graph:
        study["sweep"]["cuda_graph"] = [False, True]
    else:
        study["train"]["cuda_graph"] = True
    path = tmp_path / "graphs.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_a_study_sweeps_the_graph_on_gpus_and_a_cpu_study_is_refused_in_one_line(tmp_path):
    spec = load_study(_study(tmp_path, "cuda", sweep_graph=True))
    assert sorted({p["cuda_graph"] for p in sweep_points(spec)}) == [False, True]
    assert len(sweep_points(spec)) == 4
    for sweep_graph, key in ((True, "sweep.cuda_graph"), (False, "train.cuda_graph")):
        with pytest.raises(StudySpecError) as refused:
            load_study(_study(tmp_path, "cpu", sweep_graph))
        message = str(refused.value)
        assert "\n" not in message and f"{key}=True is not allowed" in message and "device is cpu" in message


def test_the_train_command_refuses_the_graph_on_cpu_in_one_line_before_building_anything(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(step_module, "TinyFold", no_model)
    for device in ("cpu", "auto"):
        argv = ["--cuda-graph", "--device", device]
        assert run_main("tinyfold_ray.train", lambda argv=argv: train_main(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            "tinyfold_ray.train: error: cuda_graph=true is not allowed on cpu: CUDA graphs need a CUDA or ROCm GPU"
        )


def test_build_training_refuses_the_graph_on_cpu():
    with pytest.raises(ConfigError, match="cuda_graph=true is not allowed on cpu"):
        step_module.build_training(tiny_model_config(), GRAPH, torch.device("cpu"))


class FakeStream:
    def __init__(self, name: str):
        self.name = name

    def wait_stream(self, other) -> None:
        pass


class FakeCuda:
    """torch.cuda's stream and graph calls as GraphedStep makes them, recorded instead of run: a replay
    notes the values the captured step's input buffers hold at that moment."""

    def __init__(self, monkeypatch):
        self.main, self.current = FakeStream("main"), None
        self.captured_inputs: tuple | None = None
        self.replays: list[list[int]] = []
        fake = self

        class Graph:
            def replay(self) -> None:
                fake.replays.append([int(t.sum()) for t in fake.captured_inputs])

        @contextlib.contextmanager
        def stream(s):
            fake.current = s
            yield
            fake.current = None

        @contextlib.contextmanager
        def graph(g, stream):
            fake.current = "capturing"
            yield
            fake.current = None

        monkeypatch.setattr(torch.cuda, "current_stream", lambda: fake.main)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)


def test_the_graphed_step_runs_eagerly_on_its_stream_then_captures_once_and_replays_on_new_inputs(
    monkeypatch,
):
    fake = FakeCuda(monkeypatch)
    ran_on = []

    def step(batch):
        ran_on.append(fake.current if fake.current == "capturing" else fake.current.name)
        if fake.current == "capturing":
            fake.captured_inputs = batch
        return batch[0].sum()

    graphed = GraphedStep(step, eager_steps=2, stream=FakeStream("side"))
    batches = [(torch.full((2,), float(i)), torch.full((3,), float(10 * i))) for i in range(5)]
    losses = [graphed(b) for b in batches]
    assert ran_on == ["side", "side", "capturing"]  # the step itself runs only eagerly and at the capture
    assert graphed.captured
    assert losses[0] == 0 and losses[1] == 2  # eager steps return their own loss
    # The capture recorded the step on copies of the third batch; each call from then on copies its
    # batch into those buffers and replays.
    assert all(a is not b for a, b in zip(fake.captured_inputs, batches[2], strict=True))
    assert fake.replays == [[4, 60], [6, 90], [8, 120]]
    assert losses[2] is losses[3] is losses[4]  # the graph's output buffer, overwritten by each replay
