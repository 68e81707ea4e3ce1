"""One training step, and everything it needs, shared by one-process training and every Ray worker."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tinyfold_ray.config import (
    CUDAGRAPH_COMPILE_MODES,
    DDP_GRAPH_EAGER_STEPS,
    GRAPH_EAGER_STEPS,
    ModelConfig,
    TrainConfig,
)
from tinyfold_ray.data import SyntheticData
from tinyfold_ray.device import fused_adamw_supported
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.model import TinyFold, distance_loss, num_parameters
from tinyfold_ray.train.breakdown import StepMarks
from tinyfold_ray.train.graphed import GraphedStep

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Training:
    """What the timed loop drives: the (possibly wrapped) model, its step and its data."""

    model: nn.Module
    step: Callable[[tuple], torch.Tensor]
    forward_backward: Callable[[tuple], torch.Tensor]
    """A step without the optimiser: the compute-only reference of the time breakdown."""
    marks: StepMarks
    """Where each step's time went (read after the timed loop)."""
    data: SyntheticData
    num_params: int
    fused_optimizer: bool


def build_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    device: torch.device,
    *,
    rank: int = 0,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
) -> Training:
    """Seed, data, model (optionally wrapped, e.g. in DDP), optimiser, compile: ready to step."""
    check_cuda_graph_device(train_cfg, device)
    if train_cfg.num_threads is not None:
        torch.set_num_threads(train_cfg.num_threads)
    # Same init on every rank (DDP also broadcasts rank 0's weights); data differ by rank.
    torch.manual_seed(train_cfg.seed)
    model = TinyFold(model_cfg).to(device)
    num_params = num_parameters(model)
    data = SyntheticData(model_cfg, train_cfg.batch_size, seed=train_cfg.seed, rank=rank, device=device)

    # The whole-step graph's side stream: DDP is built on it too (PyTorch's notes on DDP and CUDA graphs).
    side_stream = torch.cuda.Stream(device) if train_cfg.cuda_graph else None
    if wrap_model is not None:
        with torch.cuda.stream(side_stream) if side_stream is not None else contextlib.nullcontext():
            model = wrap_model(model)
        if side_stream is not None:
            torch.cuda.current_stream(device).wait_stream(side_stream)
    fused = train_cfg.fused_optimizer
    if fused is None:
        fused = fused_adamw_supported(device)
    check_fp16_without_sync(train_cfg.amp, fused, device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=train_cfg.learning_rate,
        weight_decay=train_cfg.weight_decay,
        fused=fused,
        capturable=train_cfg.cuda_graph,  # its step count stays on the device, so a graph can hold it
    )
    forward = model if train_cfg.compile == "none" else torch.compile(model, mode=train_cfg.compile)
    marks = StepMarks(device)
    step, forward_backward = make_step(
        forward,
        optimizer,
        train_cfg.amp,
        device,
        cudagraphs=train_cfg.compile in CUDAGRAPH_COMPILE_MODES,
        marks=None if side_stream is not None else marks,
        autocast_cache=side_stream is None,
    )
    if side_stream is not None:
        eager_steps = graph_eager_steps(model)
        if train_cfg.warmup_steps <= eager_steps:
            raise ConfigError(
                f"warmup_steps={train_cfg.warmup_steps} is not allowed: cuda_graph=true here needs >= "
                f"{eager_steps + 1} untimed warm-up steps ({eager_steps} eager, then the capture)"
            )
        step = GraphedStep(step, eager_steps=eager_steps, stream=side_stream, marks=marks)
    return Training(
        model=model,
        step=step,
        forward_backward=forward_backward,
        marks=marks,
        data=data,
        num_params=num_params,
        fused_optimizer=fused,
    )


def check_cuda_graph_device(train_cfg: TrainConfig, device: torch.device) -> None:
    """cuda_graph=true on anything but a GPU is refused before the model is built."""
    if train_cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(
            f"cuda_graph=true is not allowed on {device.type}: CUDA graphs need a CUDA or ROCm GPU"
        )


def graph_eager_steps(model: nn.Module) -> int:
    """Eager steps before the whole step is captured: more under DDP, whose all-reduce it holds."""
    return DDP_GRAPH_EAGER_STEPS if isinstance(model, DistributedDataParallel) else GRAPH_EAGER_STEPS


def check_fp16_without_sync(amp: str, fused: bool, device: torch.device) -> None:
    """fp16 on a GPU needs the fused optimiser, or its gradient scaler syncs the host in every step.

    GradScaler.step reads its inf check back to the host (`.item()`) before an unfused optimiser may
    step; a fused AdamW takes the check as a device tensor and skips the update itself. That hidden wait
    would land inside every timed step, so it is refused. On CPU ops run synchronously: nothing to wait for.
    """
    if amp == "fp16" and device.type == "cuda" and not fused:
        raise ConfigError(
            "amp=fp16 with fused_optimizer=false is not allowed: the gradient scaler would wait for the GPU "
            "in every timed step; use fused_optimizer: true (or auto), or amp=bf16"
        )


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp: str,
    device: torch.device,
    *,
    cudagraphs: bool = False,
    marks: StepMarks | None = None,
    autocast_cache: bool = True,
) -> tuple[Callable[[tuple], torch.Tensor], Callable[[tuple], torch.Tensor]]:
    """(step, forward_backward): functions batch -> detached loss tensor. `step` does forward, backward
    and the optimiser step (and sets `marks` after backward and after the optimiser); `forward_backward`
    stops before the optimiser.

    It never reads a value back to the host: the loss stays on the device. With fp16 the gradient
    scaler's inf check would sync each step, except with a fused optimiser, which takes the check itself
    (`check_fp16_without_sync` refuses the other case on GPUs). With CUDA graphs each call starts a new
    graph iteration explicitly, so a replay may reuse the previous step's output memory.
    `autocast_cache=False` for a step captured whole in a CUDA graph, as PyTorch asks of autocast there.
    """
    if amp == "none":
        autocast = contextlib.nullcontext
    else:
        dtype = AMP_DTYPES[amp]
        autocast = lambda: torch.autocast(  # noqa: E731
            device_type=device.type, dtype=dtype, cache_enabled=autocast_cache
        )
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def forward_backward(batch: tuple) -> torch.Tensor:
        msa_tokens, pair_features, target = batch
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            predicted = model(msa_tokens, pair_features)
        loss = distance_loss(predicted, target)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss.detach()

    def step(batch: tuple) -> torch.Tensor:
        if marks is not None:
            marks.begin()
        loss = forward_backward(batch)
        if marks is not None:
            marks.mark()  # under DDP, backward has waited for the gradient all-reduce by now
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        if marks is not None:
            marks.mark()
        return loss

    return step, forward_backward
