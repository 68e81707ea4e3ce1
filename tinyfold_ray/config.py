"""Typed settings: the single source of every default.

Each dataclass is frozen and keyword-only, and validates itself on construction, so a bad value is a
`ConfigError` naming the key, the value and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from tinyfold_ray.errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "rocm")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# torch.compile modes that capture CUDA graphs: recorded on a compiled function's second call and
# replayed from its third, so their warm-up needs that many untimed steps.
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")
CUDAGRAPH_WARMUP_STEPS = 3
# DDP rebuilds its gradient buckets in the order backward produced the gradients, during its second
# iteration: with several workers, the first two steps are not yet the steps a study times.
DDP_WARMUP_STEPS = 2
# cuda_graph: eager steps on a side stream before the step is captured (PyTorch's whole-network
# capture recipe), and the DDP-enabled eager steps its CUDA-graph notes ask for before a capture
# that holds DDP's all-reduce; the capture itself is one more untimed step.
GRAPH_EAGER_STEPS = 3
DDP_GRAPH_EAGER_STEPS = 11
ATTENTION_KERNELS = ("eager", "sdpa")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# How long past ten median steps a rank may finish no step before its trial ends as hung
# (train/watchdog.py), by default: 20 s is no scheduling hiccup even on a 2-core machine at load 15. For
# the test model (about 50 ms a step) a hang is called after about 21 s; for the default model on CPU
# (5.5 s a step) 75 s.
STALL_SLACK_S = 20.0
SCALING_MODES = ("weak", "strong")
WORKER_GROUPS = ("fresh", "shared")


# Upper bounds that keep a typo from asking for the impossible (a study checks them before it expands).
MAX_WORKERS = 4096
INT64 = (-(2**63), 2**63 - 1)  # every integer setting is an int64 column of the trials table


def _require(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}", key=key)


def _positive_ints(obj: Any, *names: str) -> None:
    for name in names:
        _require(getattr(obj, name) > 0, name, getattr(obj, name), "must be a positive integer")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, f"choose one of {', '.join(choices)}")


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def kind_of(value: Any) -> str:
    """How a message names a value's type: "a string", "a mapping", "null"."""
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


@functools.cache
def _base(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None is allowed)."""
    args = typing.get_args(hint)
    if type(None) in args and typing.get_origin(hint) is not dict:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _is(value: Any, base: Any) -> bool:
    if base is bool or base is str:
        return isinstance(value, base)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    return is_int or (base is float and isinstance(value, float))


def check_value(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against a field's type hint; ints become floats where a float is wanted.

    Knows the hints the settings use: int, float, bool, str, `X | None`, dict[str, float], and the
    nested config dataclasses. Numbers must be finite and integers must fit an int64 column.
    """
    base, optional = _base(hint)
    if value is None and optional:
        return None
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            _require(False, key, value, f"must be a mapping, got {kind_of(value)}")
        return {str(k): check_value(f"{key}.{k}", v, typing.get_args(base)[1]) for k, v in value.items()}
    if dataclasses.is_dataclass(base):
        _require(isinstance(value, base), key, value, f"must be a {base.__name__}")
        return value
    if not _is(value, base):
        allowed = f"must be {_TYPE_NAMES[base]}{' or null' if optional else ''}, got {kind_of(value)}"
        _require(False, key, value, allowed)
    if base is float:
        value = float(value)
        _require(math.isfinite(value), key, value, "must be a finite number")
    elif base is int:
        _require(INT64[0] <= value <= INT64[1], key, value, "must fit a 64-bit signed integer")
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_types(obj: Any) -> None:
    """Check every field against its type hint (frozen: a coerced value is set through object)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked = check_value(f.name, value, hints[f.name])
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


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
        _check_types(self)
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
    """torch.compile mode; reduce-overhead and max-autotune capture CUDA graphs."""
    num_threads: int | None = None
    """torch intra-op threads (CPU runs); None leaves torch's default."""
    cuda_graph: bool = False
    """Capture the whole step (forward, backward, DDP's all-reduce, optimiser) in one CUDA graph after
    the warm-up's eager steps, and replay it every step (GPU only; train/step.py)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _positive_ints(self, "batch_size", "num_steps")
        _require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be an integer >= 0")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _choice("amp", self.amp, AMP_MODES)
        _choice("compile", self.compile, COMPILE_MODES)
        # A measured step must never contain a compilation: it has to land in the warm-up.
        wanted = CUDAGRAPH_WARMUP_STEPS if self.compile in CUDAGRAPH_COMPILE_MODES else 1
        _require(
            self.compile == "none" or self.warmup_steps >= wanted,
            "warmup_steps",
            self.warmup_steps,
            f"compile={self.compile} needs >= {wanted} untimed warm-up step(s): "
            + ("compilation and CUDA-graph capture" if wanted > 1 else "compilation")
            + " must not land in a timed step",
        )
        if self.num_threads is not None:
            _positive_ints(self, "num_threads")
        if self.cuda_graph:
            self._check_cuda_graph()

    def _check_cuda_graph(self) -> None:
        _require(
            self.compile not in CUDAGRAPH_COMPILE_MODES,
            "compile",
            self.compile,
            "captures CUDA graphs of its own inside the whole-step graph of cuda_graph=true; "
            "use compile=none, default or max-autotune-no-cudagraphs with it",
        )
        _require(
            self.amp != "fp16",
            "amp",
            self.amp,
            "fp16 with cuda_graph=true is not supported (its gradient scaler is not captured); use amp=bf16",
        )
        _require(
            self.warmup_steps > GRAPH_EAGER_STEPS,
            "warmup_steps",
            self.warmup_steps,
            f"cuda_graph=true needs >= {GRAPH_EAGER_STEPS + 1} untimed warm-up steps: "
            f"{GRAPH_EAGER_STEPS} eager, then the capture",
        )


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
        _check_types(self)
        _require(self.bucket_cap_mb > 0, "bucket_cap_mb", self.bucket_cap_mb, "must be > 0")


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Ray chooses each worker's GPU through these; a fixed value would give every worker the same one.
DEVICE_VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def check_env(env: dict[str, str]) -> None:
    """Worker environment variables: valid names with string values, never device visibility."""
    for name, value in env.items():
        _require(isinstance(name, str) and bool(ENV_NAME.match(name)), "env", name, "not a variable name")
        _require(isinstance(value, str), f"env.{name}", value, "must be a string")
        _require(
            name not in DEVICE_VISIBILITY_VARS,
            f"env.{name}",
            value,
            "Ray sets device visibility per worker; choose GPUs with resources instead",
        )


@dataclass(frozen=True, kw_only=True)
class TrialSpec:
    """Everything one trial needs: what to train, on how many workers, where results go."""

    study: str = "adhoc"
    """Study name (a folder under the output directory)."""
    trial_id: str = "trial"
    """Deterministic name of this trial within the study."""
    repeat: int = 0
    """Repeat index of the same configuration."""
    run_order: int | None = None
    """Position of the trial in its study's run order (0-based; set by study expansion). Not a setting:
    it is recorded, but neither config_values nor config_hash sees it; None outside a study."""
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
    worker_group: str = "fresh"
    """fresh: the trial starts worker processes of its own (repeats stay independent). shared: it runs
    in worker processes that ran the study's trials before it with the same worker count and resources,
    with a model, optimiser and data of its own (study/groups.py), so it pays no start-up."""
    comm_backend: str | None = None
    """torch.distributed backend override; None = nccl on GPU, gloo on CPU."""
    start_timeout_s: float = 120.0
    """Longest wait for the worker group to start before the trial fails."""
    trial_timeout_s: float | None = None
    """Longest wall time of the whole trial (start-up to teardown); None = derived from its work."""
    stall_slack_s: float = STALL_SLACK_S
    """A rank in its measured steps that finishes no step for this long plus ten times its median step
    time is hung (train/watchdog.py)."""
    compile_cache: str | None = None
    """torch.compile's cache folder on each worker's node (TORCHINDUCTOR_CACHE_DIR; `~` is that node's
    home); None = torch's default, /tmp/torchinductor_<user>. Not a setting: results never depend on it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set on every worker (the study file's `env:`), over the forwarded ones."""
    profile: bool = False
    """Save a torch.profiler trace per rank of a few steps after the measured ones (train/profile.py)."""

    def __post_init__(self) -> None:
        _check_types(self)
        _positive_ints(self, "num_workers")
        _require(self.repeat >= 0, "repeat", self.repeat, "must be >= 0")
        _require(
            self.num_workers <= MAX_WORKERS, "num_workers", self.num_workers, f"must be <= {MAX_WORKERS}"
        )
        for name, amount in self.resources_per_worker.items():
            _require(amount >= 0, f"resources_per_worker.{name}", amount, "must be >= 0")
        _choice("scaling", self.scaling, SCALING_MODES)
        _choice("device", self.device, DEVICES)
        _choice("placement_strategy", self.placement_strategy, PLACEMENT_STRATEGIES)
        _choice("worker_group", self.worker_group, WORKER_GROUPS)
        _require(self.cpus_per_worker > 0, "cpus_per_worker", self.cpus_per_worker, "must be > 0")
        _require(self.start_timeout_s > 0, "start_timeout_s", self.start_timeout_s, "must be > 0")
        if self.trial_timeout_s is not None:
            _require(self.trial_timeout_s > 0, "trial_timeout_s", self.trial_timeout_s, "must be > 0")
        _require(self.stall_slack_s > 0, "stall_slack_s", self.stall_slack_s, "must be > 0")
        if self.comm_backend is not None:
            _choice("comm_backend", self.comm_backend, ("nccl", "gloo"))
        if self.compile_cache is not None:
            _require(bool(self.compile_cache.strip()), "compile_cache", self.compile_cache, "must be a path")
        # DDP all-reduces gradients in autograd hooks outside the captured graphs, into bucket views
        # that alias gradient memory the graphs' replays overwrite: not a combination to time.
        _require(
            self.num_workers == 1 or self.train.compile not in CUDAGRAPH_COMPILE_MODES,
            "compile",
            self.train.compile,
            f"captures CUDA graphs, which this DDP training ({self.num_workers} workers) does not support; "
            "use compile=default or max-autotune-no-cudagraphs",
        )
        if self.train.cuda_graph:
            self._check_cuda_graph()
        _require(
            self.num_workers == 1 or self.train.warmup_steps >= DDP_WARMUP_STEPS,
            "warmup_steps",
            self.train.warmup_steps,
            f"{self.num_workers} workers need >= {DDP_WARMUP_STEPS} untimed warm-up steps: DDP rebuilds "
            "its gradient buckets in its second step, which must not be timed",
        )
        check_env(self.env)

    def _check_cuda_graph(self) -> None:
        _require(
            self.device != "cpu",
            "cuda_graph",
            True,
            "CUDA graphs need a GPU (device cuda, rocm or auto on GPU workers), and this trial's device is cpu",
        )
        _require(
            self.num_workers == 1 or self.comm_backend != "gloo",
            "cuda_graph",
            True,
            "a graph can hold NCCL's or RCCL's all-reduce, not gloo's; leave comm_backend unset",
        )
        _require(
            self.num_workers == 1 or self.train.warmup_steps > DDP_GRAPH_EAGER_STEPS,
            "warmup_steps",
            self.train.warmup_steps,
            f"cuda_graph=true with {self.num_workers} DDP workers needs >= {DDP_GRAPH_EAGER_STEPS + 1} untimed "
            f"warm-up steps: DDP needs {DDP_GRAPH_EAGER_STEPS} eager steps before its all-reduce is captured",
        )

    @property
    def global_batch(self) -> int:
        return self.train.batch_size * self.num_workers
