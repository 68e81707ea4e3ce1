"""`python -m tinyfold_ray.bench [all|step|trial|scaling|gpu]`: print one table of measured figures.

`gpu` is the one-GPU check (tinyfold_ray/bench/gpu.py); the others are measured on any machine.

Each row: figure, target, value, settings; the machine line heads the table. Nothing here asserts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
# The trials that time fixed costs: short, since only what surrounds the steps is of interest.
SMOKE_TRAIN = TrainConfig(batch_size=4, num_steps=10, warmup_steps=2, num_threads=1)


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

    connect()
    return [
        _ray_overhead_row(args),
        *_fixed_cost_rows(args),
        *_shared_group_rows(args),
        _study_cost_row(args),
    ]


def _ray_overhead_row(args) -> Row:
    """1 Ray Train worker against one process, run in pairs back to back: the machine drifts between
    minutes more than the gap being measured, so each pair gives a ratio and the median is reported."""
    from tinyfold_ray.train.trial import run_trial

    threads = args.threads or 1
    train = TrainConfig(
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        warmup_steps=args.warmup_steps,
        num_threads=threads,
    )
    settings = (
        f"default size, batch {args.batch_size}, fp32, cpu, {threads} thread(s), {args.num_steps} steps; "
        f"the one process runs alone, with the workers' environment"
    )
    ratios = []
    for i in range(args.repeats):
        _progress(f"Ray overhead: pair {i + 1}/{args.repeats}")
        single = _one_process_throughput(train)
        trial = run_trial(_bench_spec(f"ratio{i}", train, model=ModelConfig(), cpus_per_worker=threads), None)
        if not trial.ok:
            return Row(
                "1 Ray Train worker / one process", ">= 0.97", f"failed: {trial.row['error']}", settings
            )
        ratios.append(trial.row["throughput_samples_per_sec"] / single)
    listed = ", ".join(f"{r:.3f}" for r in ratios)
    value = f"{statistics.median(ratios):.3f} (median of {len(ratios)} pairs: {listed})"
    return Row("1 Ray Train worker / one process", ">= 0.97", value, settings)


def _one_process_throughput(train: TrainConfig) -> float:
    """samples/s of `python -m tinyfold_ray.train` at default size on the CPU, in a process of its own
    with the environment Ray Train workers get (the same malloc settings)."""
    from tinyfold_ray.train.trial import WORKER_ENV

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "tinyfold_ray.train", "--device", "cpu", "--json", str(out)]
        command += ["--threads", str(train.num_threads), "--batch-size", str(train.batch_size)]
        command += ["--num-steps", str(train.num_steps), "--warmup-steps", str(train.warmup_steps)]
        done = subprocess.run(command, env={**os.environ, **WORKER_ENV}, capture_output=True, text=True)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"one-process run failed: {last[0]}")
        return json.loads(out.read_text())["throughput_samples_per_sec"]


def _fixed_cost_rows(args) -> list[Row]:
    """Trial wall time minus measured steps, next to what Ray Train alone costs (an empty train function)."""
    outcomes, empty_fits = [], []
    for i in range(args.repeats):
        _progress(f"fixed cost: trial {i + 1}/{args.repeats}")
        empty_fits.append(_empty_fit_s(i))
        outcome = _smoke_trial(1, SMOKE_TRAIN, f"overhead{i}")
        if outcome.ok:
            outcomes.append(outcome)
    settings = f"smoke model, 1 cpu worker, Ray already running, {_health_check()}"
    floor = Row(
        "Ray Train alone: fit() of an empty train function",
        "",
        f"{statistics.median(empty_fits):.2f} s (median of {len(empty_fits)})",
        settings,
    )
    if not outcomes:
        return [
            Row("fixed cost per trial (wall - measured steps)", "< 5 s", "every trial failed", settings),
            floor,
        ]
    phases = [o.phases_s for o in outcomes]
    split = ", ".join(
        f"{k[:-2]} {statistics.median(p[k] for p in phases):.2f}" for k in phases[0] if k != "measured_s"
    )
    overhead = statistics.median(o.row["overhead_s"] for o in outcomes)
    value = f"{overhead:.2f} s (median of {len(outcomes)}; {split} s)"
    return [Row("fixed cost per trial (wall - measured steps)", "< 5 s", value, settings), floor]


def _shared_group_rows(args) -> list[Row]:
    """The opt-in shared worker group: `--repeats` + 1 (at least 2) trials of the fixed-cost bench's
    settings in one fit (run_trials), so that they pay one start-up; printed under the fresh trials'
    fixed cost and Ray Train's floor."""
    from tinyfold_ray.train.trial import run_trials

    specs = _shared_group_specs(max(2, args.repeats + 1))
    _progress(f"shared worker group: {len(specs)} trials in one fit")
    outcomes = run_trials(specs, None)
    settings = (
        f"smoke model, 1 cpu worker, {SMOKE_TRAIN.num_steps} steps each, one worker group, "
        f"Ray already running, {_health_check()}"
    )
    return shared_group_figures([o.row for o in outcomes], settings)


def _shared_group_specs(count: int) -> list[TrialSpec]:
    """The fixed-cost bench's trial `count` times as one shared worker group (study/groups.py)."""
    return [_bench_spec(f"shared{i}", SMOKE_TRAIN, worker_group="shared", repeat=i) for i in range(count)]


def shared_group_figures(trials: list[dict], settings: str) -> list[Row]:
    """The figures of one shared worker group from its trials' rows, in run order: the group's wall time
    (its rows' wall times add up to it), the measured steps' share of it, and the fixed cost
    (wall - measured steps) of its first trial, which carries the start-up, and of the later ones."""
    wall_figure = "shared worker group: wall time (opt-in mode)"
    failed = [t for t in trials if t["status"] != "ok"]
    if failed:
        return [Row(wall_figure, "", f"{failed[0]['trial_id']} failed: {failed[0]['error']}", settings)]
    wall = sum(t["wall_time_s"] for t in trials)
    measured = sum(t["wall_time_s"] - t["overhead_s"] for t in trials)
    later = [t["overhead_s"] for t in trials[1:]]
    return [
        Row(
            wall_figure,
            "",
            f"{wall:.1f} s for {len(trials)} trials (measured steps {measured / wall:.1%} of it)",
            settings,
        ),
        Row(
            "fixed cost per trial in a shared worker group",
            "",
            f"first {trials[0]['overhead_s']:.2f} s, later {statistics.median(later):.2f} s "
            f"(median of {len(later)})",
            settings,
        ),
    ]


def _study_cost_row(args) -> Row:
    """What a trial costs a study beyond its measured steps, Tune's own work included."""
    from tinyfold_ray.results.loader import load_results
    from tinyfold_ray.study.runner import plan, run_study
    from tinyfold_ray.study.spec import parse_study

    raw = {
        "name": "bench-study",
        "repeats": args.repeats,
        "resources": {"device": "cpu", "cpus_per_worker": 1},
        "model": asdict(SMOKE_MODEL),
        "train": {
            "num_steps": SMOKE_TRAIN.num_steps,
            "warmup_steps": SMOKE_TRAIN.warmup_steps,
            "num_threads": SMOKE_TRAIN.num_threads,
        },
        "sweep": {"num_workers": [1], "batch_per_worker": [SMOKE_TRAIN.batch_size]},
    }
    spec = parse_study(raw, source="bench")
    with tempfile.TemporaryDirectory() as output:
        todo, _ = plan(spec, output)
        start = time.time()
        run_study(spec, output, todo, progress=lambda line: _progress(f"study: {line.split(':')[0]}"))
        wall = time.time() - start
        trials = load_results(output)
    measured = (trials["wall_time_s"] - trials["overhead_s"]).sum()
    value = (
        f"{(wall - measured) / len(todo):.2f} s ({len(todo)} trials in {wall:.1f} s; "
        f"measured steps {measured / wall:.1%} of the study's wall time)"
    )
    settings = (
        f"smoke model, 1 cpu worker, {SMOKE_TRAIN.num_steps} steps, Ray already running, {_health_check()}"
    )
    return Row("fixed cost per trial in a study (Tune included)", "", value, settings)


def _no_training(config: dict) -> None:
    return None


def _empty_fit_s(i: int) -> float:
    from tinyfold_ray.train.trial import make_trainer

    start = time.time()
    make_trainer(_bench_spec(f"empty{i}", SMOKE_TRAIN), False, train_fn=_no_training).fit()
    return time.time() - start


def _smoke_trial(num_workers: int, train: TrainConfig, trial_id: str):
    from tinyfold_ray.train.trial import run_trial

    return run_trial(_bench_spec(trial_id, train, num_workers=num_workers), None)


def _bench_spec(
    trial_id: str,
    train: TrainConfig,
    *,
    num_workers: int = 1,
    model: ModelConfig = SMOKE_MODEL,
    cpus_per_worker: float = 1.0,
    worker_group: str = "fresh",
    repeat: int = 0,
) -> TrialSpec:
    """A CPU trial of the benchmark (its results are not written anywhere)."""
    return TrialSpec(
        study="bench",
        trial_id=trial_id,
        repeat=repeat,
        worker_group=worker_group,
        num_workers=num_workers,
        device="cpu",
        cpus_per_worker=cpus_per_worker,
        model=model,
        train=train,
    )


def _health_check() -> str:
    from tinyfold_ray.train.trial import TRAIN_ENV

    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    return f"Train health check every {os.environ.get(name, TRAIN_ENV[name])} s"


def bench_scaling(args) -> list[Row]:
    from tinyfold_ray.ray_session import connect

    connect()
    train = TrainConfig(
        batch_size=args.batch_size,
        num_steps=args.scaling_steps,
        warmup_steps=args.warmup_steps,
        num_threads=1,
    )
    throughput: dict[int, list[float]] = {1: [], 2: []}
    for i in range(args.repeats):
        for n in throughput:  # alternated, so that both worker counts see the same drift of the machine
            _progress(f"weak scaling: {n} worker(s), repeat {i + 1}/{args.repeats}")
            outcome = _smoke_trial(n, train, f"weak{n}-{i}")
            if outcome.ok:
                throughput[n].append(outcome.row["throughput_samples_per_sec"])
    settings = (
        f"smoke model, batch {args.batch_size}/worker, fp32, gloo, 1 thread per worker, "
        f"{args.scaling_steps} steps, {args.repeats} repeats, {_health_check()}"
    )
    figure = "weak scaling efficiency, 2 vs 1 cpu workers"
    if not (throughput[1] and throughput[2]):
        return [Row(figure, ">= 0.90", "a trial failed", settings)]
    one, two = statistics.median(throughput[1]), statistics.median(throughput[2])
    return [Row(figure, ">= 0.90", f"{two / (2 * one):.3f} ({one:.1f} -> {two:.1f} samples/s)", settings)]


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


BENCHES = {"step": bench_step, "trial": bench_trial, "scaling": bench_scaling}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m tinyfold_ray.bench", description=__doc__)
    # `gpu` is dispatched before parsing (its flags are its own: `gpu --help`); listed so --help shows it.
    p.add_argument(
        "which",
        nargs="?",
        choices=["all", *BENCHES, "gpu"],
        default="all",
        help="which figures (default all: step, trial, scaling); gpu: the one-GPU check, see `gpu --help`",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--scaling-steps", type=int, default=40, help="measured steps of each weak-scaling trial")
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu"]:  # the one-GPU check has flags of its own
        from tinyfold_ray.bench.gpu import main as gpu_main

        return gpu_main(argv[1:])
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
