"""Flags of `python -m tinyfold_ray.train`, named as TinyOpenFold's users know them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tinyfold_ray.cli import ArgumentParser
from tinyfold_ray.config import (
    AMP_MODES,
    ATTENTION_KERNELS,
    COMPILE_MODES,
    DEVICES,
    PLACEMENT_STRATEGIES,
    ModelConfig,
    TrainConfig,
    TrialSpec,
)
from tinyfold_ray.errors import ConfigError


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m tinyfold_ray.train",
        description="Train the TinyOpenFold Evoformer on synthetic data and time it: one process on one "
        "device, or (with --workers) one Ray Train trial of N DDP workers that writes Parquet.",
    )
    d_model, d_train = ModelConfig(), TrainConfig()
    m = p.add_argument_group("model (defaults: TinyOpenFold v1)")
    m.add_argument("--seq-len", type=int, default=d_model.seq_len, help="residues R")
    m.add_argument("--num-seqs", type=int, default=d_model.num_seqs, help="MSA sequences S")
    m.add_argument("--msa-dim", type=int, default=d_model.c_m, help="MSA channels c_m")
    m.add_argument("--pair-dim", type=int, default=d_model.c_z, help="pair channels c_z")
    m.add_argument("--num-blocks", type=int, default=d_model.num_blocks, help="Evoformer blocks")
    m.add_argument("--attention", choices=ATTENTION_KERNELS, default=d_model.attention)

    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, default=d_train.batch_size, help="samples per step per worker")
    t.add_argument("--num-steps", type=int, default=d_train.num_steps, help="measured steps")
    t.add_argument("--warmup-steps", type=int, default=d_train.warmup_steps, help="untimed steps first")
    t.add_argument("--learning-rate", type=float, default=d_train.learning_rate)
    t.add_argument("--seed", type=int, default=d_train.seed)
    # default None, not "none": --use-amp must tell "not given" from an explicit --amp.
    t.add_argument("--amp", choices=AMP_MODES, default=None, help="mixed precision (default none)")
    t.add_argument("--use-amp", action="store_true", help="TinyOpenFold's spelling of --amp fp16")
    t.add_argument("--compile", choices=COMPILE_MODES, default=d_train.compile, help="torch.compile mode")
    t.add_argument(
        "--cuda-graph",
        action="store_true",
        help="capture the whole step (forward, backward, all-reduce, optimiser) in one CUDA graph (GPU only)",
    )
    t.add_argument("--fused-optimizer", choices=("auto", "on", "off"), default="auto", help="fused AdamW")
    t.add_argument("--threads", type=int, default=None, help="torch threads (CPU runs)")
    t.add_argument("--device", choices=DEVICES, default="auto", help="auto picks a GPU when torch sees one")

    r = p.add_argument_group("Ray Train trial (with --workers)")
    r.add_argument("--workers", type=int, default=None, help="run one Ray Train trial with N DDP workers")
    r.add_argument("--output", default="results", help="results location (path or pyarrow URI)")
    r.add_argument("--study", default="adhoc", help="study name: the folder under --output")
    r.add_argument("--trial-id", default=None, help="trial name (default: derived from the settings)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0)
    r.add_argument("--placement", choices=PLACEMENT_STRATEGIES, default="PACK")
    r.add_argument(
        "--profile",
        action="store_true",
        help="save a torch.profiler trace per rank (Chrome format) under OUTPUT/STUDY/_profiles/",
    )
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs")

    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    o.add_argument(
        "--validate-setup",
        action="store_true",
        help="start one Ray Train worker per local GPU (or --workers N; gloo workers without a GPU), check "
        "devices, all-reduce and DDP steps, measure bus bandwidth; exit 1 on any problem",
    )
    return p


def configs_from_args(args) -> tuple[ModelConfig, TrainConfig]:
    amp = args.amp
    if args.use_amp:
        if amp not in (None, "fp16"):
            raise ConfigError(f"--use-amp means --amp fp16, but --amp {amp} was also given")
        amp = "fp16"
    model = ModelConfig(
        seq_len=args.seq_len,
        num_seqs=args.num_seqs,
        c_m=args.msa_dim,
        c_z=args.pair_dim,
        num_blocks=args.num_blocks,
        attention=args.attention,
    )
    train = TrainConfig(
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        warmup_steps=args.warmup_steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        amp=amp or "none",
        compile=args.compile,
        fused_optimizer={"auto": None, "on": True, "off": False}[args.fused_optimizer],
        num_threads=args.threads,
        cuda_graph=args.cuda_graph,
    )
    return model, train


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_cfg, train_cfg = configs_from_args(args)

    from tinyfold_ray.train.single import format_summary, train_single

    if args.validate_setup:
        from tinyfold_ray.train.validate import validate_setup

        report = validate_setup(args.device, args.workers, verbose=args.verbose)
        print(report.text())
        return 0 if report.ok else 1
    if args.workers is not None:
        return run_ray_trial(args, model_cfg, train_cfg)
    run = train_single(model_cfg, train_cfg, args.device)
    print(format_summary(run))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def run_ray_trial(args, model_cfg: ModelConfig, train_cfg: TrainConfig) -> int:
    from tinyfold_ray.ray_session import connect
    from tinyfold_ray.results.provenance import git_commit
    from tinyfold_ray.results.storage import absolute_location
    from tinyfold_ray.train.trial import run_trial

    spec = TrialSpec(
        study=args.study,
        trial_id=args.trial_id or f"w{args.workers}-b{train_cfg.batch_size}-amp{train_cfg.amp}",
        num_workers=args.workers,
        device=args.device,
        cpus_per_worker=args.cpus_per_worker,
        placement_strategy=args.placement,
        profile=args.profile,
        model=model_cfg,
        train=train_cfg,
    )
    print(f"running on {connect(verbose=args.verbose)}", file=sys.stderr)
    outcome = run_trial(spec, absolute_location(args.output), git_commit=git_commit())
    row = outcome.row
    if not outcome.ok:
        print(f"trial {spec.trial_id} failed: {row['error']}", file=sys.stderr)
        print(f"wrote {outcome.path}", file=sys.stderr)
        return 1
    print(
        f"trial {spec.trial_id}: {row['num_workers']} workers on {row['num_nodes']} node(s), "
        f"{row['throughput_samples_per_sec']:.2f} samples/s (median step {row['step_time_median_s'] * 1e3:.1f} ms, "
        f"p95 {row['step_time_p95_s'] * 1e3:.1f} ms), loss {row['first_loss']:.3f} -> {row['final_loss']:.3f}, "
        f"fixed cost {row['overhead_s']:.1f} s"
    )
    print(f"wrote {outcome.path}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(row, indent=2, default=str) + "\n")
    return 0
