"""One training step, and everything it needs, shared by one-process training and every Ray worker."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tinyfold_ray.config import CUDAGRAPH_COMPILE_MODES, ModelConfig, TrainConfig
from tinyfold_ray.data import SyntheticData
from tinyfold_ray.device import fused_adamw_supported
from tinyfold_ray.errors import ConfigError
from tinyfold_ray.model import TinyFold, distance_loss, num_parameters
from tinyfold_ray.train.breakdown import StepMarks

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
    if train_cfg.num_threads is not None:
        torch.set_num_threads(train_cfg.num_threads)
    # Same init on every rank (DDP also broadcasts rank 0's weights); data differ by rank.
    torch.manual_seed(train_cfg.seed)
    model = TinyFold(model_cfg).to(device)
    num_params = num_parameters(model)
    data = SyntheticData(model_cfg, train_cfg.batch_size, seed=train_cfg.seed, rank=rank, device=device)

    if wrap_model is not None:
        model = wrap_model(model)
    fused = train_cfg.fused_optimizer
    if fused is None:
        fused = fused_adamw_supported(device)
    check_fp16_without_sync(train_cfg.amp, fused, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_cfg.learning_rate, weight_decay=train_cfg.weight_decay, fused=fused
    )
    forward = model if train_cfg.compile == "none" else torch.compile(model, mode=train_cfg.compile)
    marks = StepMarks(device)
    step, forward_backward = make_step(
        forward,
        optimizer,
        train_cfg.amp,
        device,
        cudagraphs=train_cfg.compile in CUDAGRAPH_COMPILE_MODES,
        marks=marks,
    )
    return Training(
        model=model,
        step=step,
        forward_backward=forward_backward,
        marks=marks,
        data=data,
        num_params=num_params,
        fused_optimizer=fused,
    )


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
) -> tuple[Callable[[tuple], torch.Tensor], Callable[[tuple], torch.Tensor]]:
    """(step, forward_backward): functions batch -> detached loss tensor. `step` does forward, backward
    and the optimiser step (and sets `marks` after backward and after the optimiser); `forward_backward`
    stops before the optimiser.

    It never reads a value back to the host: the loss stays on the device. With fp16 the gradient
    scaler's inf check would sync each step, except with a fused optimiser, which takes the check itself
    (`check_fp16_without_sync` refuses the other case on GPUs). With CUDA graphs each call starts a new
    graph iteration explicitly, so a replay may reuse the previous step's output memory.
    """
    if amp == "none":
        autocast = contextlib.nullcontext
    else:
        dtype = AMP_DTYPES[amp]
        autocast = lambda: torch.autocast(device_type=device.type, dtype=dtype)  # noqa: E731
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
