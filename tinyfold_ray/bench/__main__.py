"""`python -m tinyfold_ray.bench [all|step|trial|scaling]`: print one table of measured figures.

Each row: figure, target, value, settings; the machine line heads the table. Nothing here asserts.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

from tinyfold_ray.bench.machine import describe_machine
from tinyfold_ray.cli import ArgumentParser, run_main
from tinyfold_ray.config import (
    AMP_MODES,
    ATTENTION_KERNELS,
    COMPILE_MODES,
    ModelConfig,
    TrainConfig,
    TrialSpec,
)

# The smoke study's model: big enough that compute dominates, small enough for 2 CPU cores.
SMOKE_MODEL = ModelConfig(
    c_m=32,
    c_z=32,
    num_blocks=2,
    num_seqs=8,
    seq_len=24,
    msa_transition_dim=128,
    pair_transition_dim=128,
    c_opm=16,
)


@dataclass
class Row:
    figure: str
    target: str
    value: str
    settings: str


def bench_step(args) -> list[Row]:
    from tinyfold_ray.device import resolve_backend, torch_device
    from tinyfold_ray.train.single import train_single

    model = ModelConfig(attention=args.attention)
    rows = []
    for amp in args.amp:
        train = TrainConfig(
            batch_size=args.batch_size,
            num_steps=args.num_steps,
            warmup_steps=args.warmup_steps,
            amp=amp,
            compile=args.compile,
            num_threads=args.threads,
        )
        run = train_single(model, train, args.device)
        settings = (
            f"TinyOpenFold default size, batch {args.batch_size}, amp {amp}, compile {args.compile}, "
            f"attention {args.attention}, {run['backend']}, {args.num_steps} steps"
        )
        rows.append(
            Row(
                "one-process step",
                "as fast as the hardware allows",
                f"{run['throughput_samples_per_sec']:.2f} samples/s",
                settings,
            )
        )
        if args.reference and amp == "none":
            from tinyfold_ray.bench.reference import time_reference

            median, _ = time_reference(
                args.reference,
                batch_size=args.batch_size,
                num_steps=args.num_steps,
                warmup_steps=args.warmup_steps,
                device=torch_device(resolve_backend(args.device)),
            )
            ref_throughput = args.batch_size / median
            rows.append(
                Row("TinyOpenFold v1 reference step", "", f"{ref_throughput:.2f} samples/s", settings)
            )
            ratio = run["throughput_samples_per_sec"] / ref_throughput
            rows.append(Row("tinyfold-ray / reference", ">= 1.00", f"{ratio:.3f}", settings))
    return rows


def bench_trial(args) -> list[Row]:
    from tinyfold_ray.ray_session import connect
    from tinyfold_ray.train.single import train_single
    from tinyfold_ray.train.trial import run_trial

    connect()
    threads = args.threads or 1
    train = TrainConfig(
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        warmup_steps=args.warmup_steps,
        num_threads=threads,
    )
    settings = (
        f"default size, batch {args.batch_size}, fp32, cpu, {threads} thread(s), {args.num_steps} steps"
    )
    single = train_single(ModelConfig(), train, "cpu")
    spec = TrialSpec(
        study="bench", trial_id="ratio", num_workers=1, device="cpu", cpus_per_worker=threads, train=train
    )
    trial = run_trial(spec, None)
    rows = []
    if trial.ok:
        ratio = trial.row["throughput_samples_per_sec"] / single["throughput_samples_per_sec"]
        rows.append(Row("1 Ray Train worker / one process", ">= 0.97", f"{ratio:.3f}", settings))
    else:
        rows.append(
            Row("1 Ray Train worker / one process", ">= 0.97", f"failed: {trial.row['error']}", settings)
        )

    smoke_train = TrainConfig(batch_size=4, num_steps=10, warmup_steps=2, num_threads=1)
    ok = _smoke_trials(1, smoke_train, args.repeats, "overhead")
    overheads = [o.row["overhead_s"] for o in ok]
    phases = [o.phases_s for o in ok]
    if overheads:
        split = ", ".join(
            f"{k[:-2]} {statistics.median(p[k] for p in phases):.2f}" for k in phases[0] if k != "measured_s"
        )
        rows.append(
            Row(
                "fixed cost per trial (wall - measured steps)",
                "< 5 s",
                f"{statistics.median(overheads):.2f} s (median of {len(overheads)}; {split} s)",
                "smoke model, 1 cpu worker, Ray already running",
            )
        )
    return rows


def _smoke_trials(num_workers: int, train: TrainConfig, repeats: int, name: str):
    """Run the smoke model `repeats` times on `num_workers` CPU workers; return the ok outcomes."""
    from tinyfold_ray.train.trial import run_trial

    outcomes = []
    for i in range(repeats):
        spec = TrialSpec(
            study="bench",
            trial_id=f"{name}{num_workers}-{i}",
            num_workers=num_workers,
            device="cpu",
            model=SMOKE_MODEL,
            train=train,
        )
        outcomes.append(run_trial(spec, None))
    return [o for o in outcomes if o.ok]


def bench_scaling(args) -> list[Row]:
    from tinyfold_ray.ray_session import connect

    connect()
    train = TrainConfig(
        batch_size=args.batch_size, num_steps=args.num_steps, warmup_steps=args.warmup_steps, num_threads=1
    )
    throughput = {}
    for n in (1, 2):
        values = [o.row["throughput_samples_per_sec"] for o in _smoke_trials(n, train, args.repeats, "weak")]
        throughput[n] = statistics.median(values) if values else None
    settings = f"smoke model, batch {args.batch_size}/worker, fp32, gloo, 1 thread per worker, {args.repeats} repeats"
    if not (throughput[1] and throughput[2]):
        return [Row("weak scaling efficiency, 2 vs 1 cpu workers", ">= 0.90", "a trial failed", settings)]
    efficiency = throughput[2] / (2 * throughput[1])
    return [
        Row(
            "weak scaling efficiency, 2 vs 1 cpu workers",
            ">= 0.90",
            f"{efficiency:.3f} ({throughput[1]:.1f} -> {throughput[2]:.1f} samples/s)",
            settings,
        )
    ]


BENCHES = {"step": bench_step, "trial": bench_trial, "scaling": bench_scaling}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m tinyfold_ray.bench", description=__doc__)
    p.add_argument("which", nargs="?", choices=["all", *BENCHES], default="all")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="trials per figure where trials are compared")
    p.add_argument("--amp", nargs="+", choices=AMP_MODES, default=["none"], help="step bench precisions")
    p.add_argument("--compile", choices=COMPILE_MODES, default="none")
    p.add_argument("--attention", choices=ATTENTION_KERNELS, default="eager")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", default=None, help="path to a copy of TinyOpenFold's tiny_openfold_v1.py")
    return p


def format_rows(rows: list[Row]) -> str:
    headers = Row("figure", "target", "value", "settings")
    widths = [max(len(getattr(r, f)) for r in [headers, *rows]) for f in ("figure", "target", "value")]
    lines = []
    for r in [headers, *rows]:
        cells = [r.figure.ljust(widths[0]), r.target.ljust(widths[1]), r.value.ljust(widths[2]), r.settings]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"machine: {describe_machine()}", flush=True)
    names = list(BENCHES) if args.which == "all" else [args.which]
    rows = []
    for name in names:
        rows.extend(BENCHES[name](args))
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.bench", main))
