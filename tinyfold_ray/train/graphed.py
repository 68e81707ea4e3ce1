"""The whole training step as one CUDA graph: forward, backward, DDP's all-reduce and the optimiser,
captured once and replayed every step after (`cuda_graph: true`; PyTorch's "whole-network capture").

A step of the default model launches about a thousand small kernels, and at batch 4 the GPU waits on
the host that launches them; a replay launches them all at once. What capture needs, and where it is
done here (PyTorch's CUDA-graph notes, "Whole-network capture" and "Usage with DistributedDataParallel"):
- static shapes and static memory: each batch is copied into input buffers made at the capture, the
  loss is read from the captured output, and the gradients are the ones the captured backward made
  (set to None before the capture, so they come from the graph's own memory pool);
- no host synchronisation inside the step (train/step.py never reads a value back) and an optimiser
  that keeps its step count on the device (`capturable=True`, set by build_training);
- eager steps first, on a side stream: cuDNN/cuBLAS choose their algorithms, the optimiser makes its
  state, torch.compile compiles, and DDP rebuilds its buckets; DDP asks for 11 such steps
  (config.DDP_GRAPH_EAGER_STEPS) and for being built on the side stream too (build_training);
- NCCL's all-reduce can be captured (NCCL >= 2.9.6); torch's process group keeps captured work away
  from its watchdog. gloo's cannot: configs refuse cuda_graph without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tinyfold_ray.train.breakdown import StepMarks


class GraphedStep:
    """batch -> loss, like the step it wraps: `eager_steps` eager calls on `stream`, then one call that
    captures the step and replays it, then replays. The returned loss is the graph's output buffer,
    overwritten by the next call (the timed loop copies it at once)."""

    def __init__(
        self,
        step: Callable[[tuple], torch.Tensor],
        *,
        eager_steps: int,
        stream: torch.cuda.Stream,
        marks: StepMarks | None = None,
    ):
        self._step = step
        self._eager_left = eager_steps
        self._stream = stream
        self._marks = marks
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._loss: torch.Tensor | None = None

    def __call__(self, batch: tuple) -> torch.Tensor:
        if self._eager_left > 0:
            self._eager_left -= 1
            return self._on_side_stream(batch)
        if self._graph is None:
            self._capture(batch)
        if self._marks is not None:
            self._marks.begin()
        for buffer, value in zip(self._inputs, batch, strict=True):
            buffer.copy_(value)
        self._graph.replay()
        if self._marks is not None:
            # One graph: the step cannot be split, so the whole of it counts as forward + backward.
            self._marks.mark()
            self._marks.mark()
        return self._loss

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def _on_side_stream(self, batch: tuple) -> torch.Tensor:
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            loss = self._step(batch)
        torch.cuda.current_stream().wait_stream(self._stream)
        return loss

    def _capture(self, batch: tuple) -> None:
        """Record the step on the static buffers; nothing runs until the first replay."""
        self._inputs = tuple(t.clone() for t in batch)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            self._loss = self._step(self._inputs)
        self._graph = graph
