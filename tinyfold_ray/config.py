"""Typed settings: the single source of every default.

Each dataclass is frozen and keyword-only, and validates itself on construction, so a bad value is a
`ConfigError` naming the key, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tinyfold_ray.errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "rocm")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
ATTENTION_KERNELS = ("eager", "sdpa")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
SCALING_MODES = ("weak", "strong")


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _positive_ints(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            name,
            value,
            "must be a positive integer",
        )


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, f"choose one of {', '.join(choices)}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Sizes of the Evoformer; the defaults are TinyOpenFold v1's."""

    vocab_size: int = 21
    """MSA token vocabulary (20 amino acids + unknown)."""
    c_m: int = 64
    """MSA channels."""
    c_z: int = 128
    """Pair channels."""
    num_blocks: int = 4
    """Evoformer blocks."""
    num_heads_msa: int = 4
    """Heads of MSA row and column attention (head dim = c_m / heads)."""
    num_heads_pair: int = 4
    """Heads of triangle attention (head dim = c_z / heads)."""
    msa_transition_dim: int = 256
    """Hidden width of the MSA transition."""
    pair_transition_dim: int = 512
    """Hidden width of the pair transition."""
    c_opm: int = 32
    """Outer-product-mean projection width (its outer product has c_opm**2 features)."""
    num_seqs: int = 16
    """Sequences per MSA (S)."""
    seq_len: int = 64
    """Residues per sequence (R)."""
    pair_input_dim: int = 65
    """Pair input features per residue pair."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    attention: str = "eager"
    """Attention kernel: eager (matmul + softmax, the reference) or sdpa (torch's fused kernel)."""

    def __post_init__(self) -> None:
        _positive_ints(
            self,
            "vocab_size",
            "c_m",
            "c_z",
            "num_blocks",
            "num_heads_msa",
            "num_heads_pair",
            "msa_transition_dim",
            "pair_transition_dim",
            "c_opm",
            "num_seqs",
            "seq_len",
            "pair_input_dim",
        )
        _require(self.c_m % self.num_heads_msa == 0, "c_m", self.c_m, "must be divisible by num_heads_msa")
        _require(self.c_z % self.num_heads_pair == 0, "c_z", self.c_z, "must be divisible by num_heads_pair")
        # The synthetic data need a chain of >= 2 residues and >= 1 distance bin besides the separation.
        _require(
            self.seq_len >= 2, "seq_len", self.seq_len, "must be >= 2 (a chain of at least two residues)"
        )
        _require(self.pair_input_dim >= 2, "pair_input_dim", self.pair_input_dim, "must be >= 2")
        _require(self.layer_norm_eps > 0, "layer_norm_eps", self.layer_norm_eps, "must be > 0")
        _choice("attention", self.attention, ATTENTION_KERNELS)


def tiny_model_config(**overrides: Any) -> ModelConfig:
    """A model small enough for quick checks on CPU (a step takes milliseconds)."""
    sizes = dict(
        c_m=16,
        c_z=16,
        num_blocks=1,
        num_seqs=4,
        seq_len=16,
        msa_transition_dim=32,
        pair_transition_dim=32,
        c_opm=8,
    )
    return ModelConfig(**{**sizes, **overrides})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One worker's training loop: batch, steps, optimiser, precision."""

    batch_size: int = 4
    """Samples per step on one worker (per-worker batch)."""
    num_steps: int = 50
    """Measured (timed) steps."""
    warmup_steps: int = 5
    """Untimed steps before the measured ones."""
    learning_rate: float = 3e-4
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    amp: str = "none"
    """Mixed precision: none (fp32), bf16 (autocast) or fp16 (autocast + gradient scaling)."""
    seed: int = 42
    """Seed of the model init and of the data (the data stream also depends on the rank)."""
    fused_optimizer: bool | None = None
    """Fused AdamW; None = where the device supports it (CUDA / ROCm)."""
    compile: str = "none"
    """torch.compile mode; reduce-overhead uses CUDA graphs."""
    num_threads: int | None = None
    """torch intra-op threads (CPU runs); None leaves torch's default."""

    def __post_init__(self) -> None:
        _positive_ints(self, "batch_size", "num_steps")
        _require(
            isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
            "warmup_steps",
            self.warmup_steps,
            "must be an integer >= 0",
        )
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _choice("amp", self.amp, AMP_MODES)
        _choice("compile", self.compile, COMPILE_MODES)
        if self.num_threads is not None:
            _positive_ints(self, "num_threads")


@dataclass(frozen=True, kw_only=True)
class DDPConfig:
    """DistributedDataParallel knobs (find_unused_parameters is never needed: every parameter is used)."""

    bucket_cap_mb: float = 25.0
    """Gradient bucket size in MiB."""
    gradient_as_bucket_view: bool = True
    """Gradients alias the all-reduce buckets (saves a copy and memory)."""
    static_graph: bool = False
    """Tell DDP the graph never changes between steps."""

    def __post_init__(self) -> None:
        _require(self.bucket_cap_mb > 0, "bucket_cap_mb", self.bucket_cap_mb, "must be > 0")


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """Everything one trial needs: what to train, on how many workers, where results go."""

    study: str = "adhoc"
    """Study name (a folder under the output directory)."""
    trial_id: str = "trial"
    """Deterministic name of this trial within the study."""
    repeat: int = 0
    """Repeat index of the same configuration."""
    scaling: str = "weak"
    """weak: per-worker batch fixed; strong: global batch fixed (recorded for the summary)."""
    num_workers: int = 1
    """DDP processes (one per GPU on GPU backends)."""
    device: str = "auto"
    """auto, cpu, cuda or rocm."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker reserves (also its torch threads on CPU)."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources per worker (e.g. a custom resource to pin a node type)."""
    placement_strategy: str = "PACK"
    """Ray placement-group strategy for the workers."""
    comm_backend: str | None = None
    """torch.distributed backend override; None = nccl on GPU, gloo on CPU."""
    start_timeout_s: float = 120.0
    """Longest wait for the worker group to start before the trial fails."""
    trial_timeout_s: float | None = None
    """Longest wall time of the whole trial (start-up to teardown); None = derived from its work."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    fail_on_rank: int | None = None
    """Testing aid: this rank raises after its warm-up (checks that failures become data)."""

    def __post_init__(self) -> None:
        _positive_ints(self, "num_workers")
        _choice("scaling", self.scaling, SCALING_MODES)
        _choice("device", self.device, DEVICES)
        _choice("placement_strategy", self.placement_strategy, PLACEMENT_STRATEGIES)
        _require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        _require(self.start_timeout_s > 0, "start_timeout_s", self.start_timeout_s, "must be > 0")
        if self.trial_timeout_s is not None:
            _require(self.trial_timeout_s > 0, "trial_timeout_s", self.trial_timeout_s, "must be > 0")
        if self.comm_backend is not None:
            _choice("comm_backend", self.comm_backend, ("nccl", "gloo"))

    @property
    def global_batch(self) -> int:
        return self.train.batch_size * self.num_workers
