"""`python -m tinyfold_ray.bench gpu`: the one-GPU check, one table in under 8 minutes.

Rows: one-process samples/s at the default size (fp32 and bf16, eager and the fastest mode that works
of compile default, compile reduce-overhead and the whole-step CUDA graph, batch 4 and 8) with peak
memory and MFU; a bf16 batch sweep (4, 8, 16, ... until out of memory or out of time) in eager and the
fastest mode; with --reference, TinyOpenFold v1 timed on the same GPU and every row's ratio to it; a
one-worker Ray Train trial and its ratio to one process; a one-GPU study (batch x AMP, 2 repeats)
summarised; the pytest `gpu` tests. Every run is a subprocess with a time limit taken from one budget,
so a slow compile or a hang costs its own row only and the table always prints; a row that did not
fit says so.

On a node without network access and without Ray: build `wheelhouse/` where there is network with
`python -m tinyfold_ray.offline --python X.Y --platform manylinux_2_<glibc>_<arch>` (tinyfold_ray/offline.py)
and copy it into the project root on the node; this script installs it into a private folder and puts
that and the project on PYTHONPATH for every process it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from tinyfold_ray.bench.machine import describe_machine
from tinyfold_ray.cli import ArgumentParser, run_main
from tinyfold_ray.offline import DEFAULT_DEST

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(tempfile.gettempdir()) / "tinyfold-ray-site"
# Four warm-up steps: the whole-step graph captures after three eager ones (config.GRAPH_EAGER_STEPS),
# and compile's CUDA-graph modes record on their second call.
STEPS, WARMUP = 20, 4
GRAPH = "graph"  # the whole step in one CUDA graph (`--cuda-graph`); the other modes are compile's
MODE_CANDIDATES = (GRAPH, "default", "reduce-overhead")  # the cheapest to try first
SWEEP_BATCHES = tuple(4 * 2**i for i in range(9))  # 4 .. 1024 samples per step
SKIPPED = "skipped: time budget"
# The model of every run: empty = TinyOpenFold's default size (flags of `python -m tinyfold_ray.train`,
# and the same as a study's `model:` mapping).
MODEL_FLAGS: list[str] = []
STUDY_MODEL: dict[str, int] = {}
STUDY_SWEEP = {"num_workers": [1], "batch_per_worker": [4, 8], "amp": ["none", "bf16"]}
STUDY_REPEATS = 2
# Seconds kept back, while earlier rows run, for the rows that must appear whatever else happens.
RESERVE = {"ray": 45, "study": 120, "pytest": 150}
CAP_S = {"none": 90, GRAPH: 90}  # longest run of each mode; compile's cold compile needs more
COMPILED_CAP_S = 180


@dataclass
class Row:
    figure: str
    value: str
    settings: str


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allow(self, cap: float, keep: float = 0.0) -> float:
        """Seconds a run may take: at most `cap`, leaving `keep` for what must still run."""
        return max(0.0, min(cap, self.left() - keep))


def ensure_ray(wheelhouse: Path = ROOT / DEFAULT_DEST) -> str:
    """Make Ray importable here and in every child process; say where it came from."""
    paths = [str(ROOT)]
    note = "installed"
    try:
        import ray  # noqa: F401
    except ImportError:
        wheels = sorted(wheelhouse.glob("*.whl"))
        if not wheels:
            return (
                f"missing (no wheels in {wheelhouse}: build them where there is network with "
                "`python -m tinyfold_ray.offline --python X.Y --platform manylinux_2_<glibc>_<arch>`)"
            )
        if not (SITE / "ray").is_dir():
            command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            command += ["--no-compile", "--target", str(SITE), *map(str, wheels)]
            subprocess.run(command, check=True)
        sys.path.insert(0, str(SITE))
        paths.append(str(SITE))
        note = f"from {wheelhouse} into {SITE}"
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return note


def run(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    """(the finished process or None when it ran out of time, seconds taken)."""
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start
    return done, time.monotonic() - start


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return lines[-1][:200] if lines else f"exit {done.returncode}"


def mode_flags(mode: str) -> list[str]:
    return ["--cuda-graph"] if mode == GRAPH else ["--compile", mode]


def mode_label(mode: str) -> str:
    return {"none": "eager", GRAPH: "CUDA graph of the whole step"}.get(mode, f"compile {mode}")


def cap_s(mode: str) -> float:
    return CAP_S.get(mode, COMPILED_CAP_S)


def one_process(amp: str, batch: int, mode: str, timeout: float) -> dict | str:
    """`python -m tinyfold_ray.train` at the default size in `mode` (a compile mode or GRAPH): its JSON,
    or why there is none."""
    if timeout < 20:
        return SKIPPED
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = [sys.executable, "-m", "tinyfold_ray.train", "--json", str(out), "--amp", amp]
        command += ["--batch-size", str(batch), *mode_flags(mode)]
        command += ["--num-steps", str(STEPS), "--warmup-steps", str(WARMUP), *MODEL_FLAGS]
        done, _ = run(command, timeout)
        if done is None:
            return f"timed out after {timeout:.0f} s"
        if done.returncode != 0:
            return f"failed: {last_line(done)}"
        return json.loads(out.read_text())


def gib(num_bytes) -> str:
    """'1.23 GiB', or 'n/a' where the device keeps no such count (CPU) or it is missing."""
    import pandas as pd

    return "n/a" if num_bytes is None or pd.isna(num_bytes) else f"{num_bytes / 2**30:.2f} GiB"


def describe_run(result: dict | str, reference: dict | str | None = None) -> str:
    """samples/s, median step, peak memory, MFU, warm-up; with a timed reference, the ratio to it."""
    if isinstance(result, str):
        return result
    mfu = result.get("mfu")
    mfu_text = f"MFU {mfu * 100:.2f} %" if mfu is not None else "MFU n/a"
    ratio = ""
    if isinstance(reference, dict):
        ratio = f", {result['throughput_samples_per_sec'] / reference['throughput_samples_per_sec']:.2f}x v1"
    return (
        f"{result['throughput_samples_per_sec']:.1f} samples/s{ratio} (median step "
        f"{result['step_time_median_s'] * 1e3:.1f} ms, {gib(result['peak_memory_bytes'])} peak, "
        f"{mfu_text}, warm-up {result['warmup_time_s']:.0f} s)"
    )


def gpu_backend() -> str:
    import torch

    return "rocm" if torch.version.hip else "cuda"


# A run: (amp, batch, mode) -> (amp, batch, mode, timeout) -> its JSON or why there is none.
TimeRun = Callable[[str, int, str, float], "dict | str"]


def time_cell(runs: dict, key: tuple, budget: Budget, keep: float, time_run: TimeRun) -> dict | str:
    """The run of `key` = (amp, batch, mode), timed unless it was already (or skipped for time before)."""
    if runs.get(key, SKIPPED) == SKIPPED:
        amp, batch, mode = key
        runs[key] = time_run(amp, batch, mode, budget.allow(cap_s(mode), keep))
    return runs[key]


def eager_runs(runs: dict, budget: Budget, keep: float, time_run: TimeRun = one_process) -> None:
    """Time the eager cells not yet timed (or skipped for time before)."""
    for amp in ("none", "bf16"):
        for batch in (4, 8):
            time_cell(runs, (amp, batch, "none"), budget, keep, time_run)


def try_modes(
    runs: dict, budget: Budget, keep: float, modes: tuple[str, ...], time_run: TimeRun = one_process
):
    """Time `modes` on bf16 batch 4 (those not tried yet); return the fastest that worked, if any."""
    for mode in modes:
        time_cell(runs, ("bf16", 4, mode), budget, keep, time_run)
    return fastest_mode(runs)


def compiled_matrix(
    runs: dict, budget: Budget, keep: float, best: str | None, time_run: TimeRun = one_process
):
    """The matrix's other cells (fp32, batch 8) in the fastest mode."""
    for amp, batch in (("none", 4), ("bf16", 8), ("none", 8)):
        if best is not None:
            time_cell(runs, (amp, batch, best), budget, keep, time_run)


def batch_sweep(runs: dict, mode: str, budget: Budget, keep: float, time_run: TimeRun = one_process) -> None:
    """bf16 in `mode` at batch 4, 8, 16, ... (SWEEP_BATCHES) until a batch gives no figures: out of
    memory, another failure, a time-out or no time left ends the sweep (`sweep_rows` says which)."""
    for batch in SWEEP_BATCHES:
        if not isinstance(time_cell(runs, ("bf16", batch, mode), budget, keep, time_run), dict):
            return


def sweep_rows(runs: dict, mode: str, reference: dict | str | None = None) -> list[Row]:
    """One row per batch the sweep reached (the last says why it ended, if it did), then the best."""
    settings = f"bf16, {mode_label(mode)}, default size, {STEPS} steps after {WARMUP} warm-up"
    rows, timed = [], {}
    for batch in SWEEP_BATCHES:
        result = runs.get(("bf16", batch, mode))
        if result is None:
            break
        value = describe_run(result, reference)
        if not isinstance(result, dict):
            out_of_memory = "out of memory" in result.lower()
            value = ("out of memory: " if out_of_memory else "") + f"{value} (the sweep ends here)"
        rows.append(Row(f"batch sweep, bf16, {mode_label(mode)}, batch {batch}", value, settings))
        if not isinstance(result, dict):
            break
        timed[batch] = result
    if timed:
        best = max(timed, key=lambda b: timed[b]["throughput_samples_per_sec"])
        rows.append(
            Row(
                f"batch sweep, bf16, {mode_label(mode)}: best batch",
                f"batch {best}: {describe_run(timed[best], reference)}",
                "target: >= 2,000 samples/s on one H200",
            )
        )
    return rows


def reference_run(path: str, budget: Budget, keep: float) -> dict | str:
    """TinyOpenFold v1 timed by its own loop (bench/reference.py), fp32 eager batch 4, on this GPU."""
    timeout = budget.allow(120, keep)
    if timeout < 20:
        return SKIPPED
    command = [sys.executable, "-m", "tinyfold_ray.bench.reference", str(Path(path).resolve())]
    command += ["--batch-size", "4", "--num-steps", str(STEPS), "--warmup-steps", str(WARMUP)]
    command += ["--device", gpu_backend()]
    done, _ = run(command, timeout)
    if done is None:
        return f"timed out after {timeout:.0f} s"
    if done.returncode != 0:
        return f"failed: {last_line(done)}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_rows(reference: dict | str, runs: dict) -> list[Row]:
    settings = "TinyOpenFold v1's own loop, default size, fp32 eager, batch 4, same GPU"
    value = reference
    if isinstance(reference, dict):
        value = (
            f"{reference['throughput_samples_per_sec']:.1f} samples/s "
            f"(median step {reference['step_time_median_s'] * 1e3:.1f} ms)"
        )
    rows = [Row("TinyOpenFold v1 (reference)", value, settings)]
    at_batch_4 = {
        mode: r["throughput_samples_per_sec"]
        for (amp, batch, mode), r in runs.items()
        if batch == 4 and isinstance(r, dict)
    }
    if isinstance(reference, dict) and at_batch_4:
        mode = max(at_batch_4, key=at_batch_4.get)
        ratio = at_batch_4[mode] / reference["throughput_samples_per_sec"]
        rows.append(
            Row(
                "fastest at batch 4 / TinyOpenFold v1",
                f"{ratio:.1f}x ({mode_label(mode)})",
                "target >= 10x; every row's ratio: 'Nx v1'",
            )
        )
    return rows


def fastest_mode(runs: dict) -> str | None:
    worked = {
        mode: r["throughput_samples_per_sec"]
        for (amp, batch, mode), r in runs.items()
        if (amp, batch) == ("bf16", 4) and mode != "none" and isinstance(r, dict)
    }
    return max(worked, key=worked.get) if worked else None


def one_process_rows(runs: dict, reference: dict | str | None = None) -> list[Row]:
    best = fastest_mode(runs)
    tried = [m for m in MODE_CANDIDATES if ("bf16", 4, m) in runs]
    rows = []
    for compiled in (False, True):
        for amp in ("none", "bf16"):
            for batch in (4, 8):
                modes = [best or "default"] if compiled else ["none"]
                if compiled and (amp, batch) == ("bf16", 4):
                    modes = tried or modes
                for mode in modes:
                    precision = "fp32" if amp == "none" else amp
                    label = mode_label(mode) + (" (fastest)" if mode == best else "")
                    result = runs.get((amp, batch, mode), SKIPPED)
                    rows.append(
                        Row(
                            f"one process, {precision}, {label}, batch {batch}",
                            describe_run(result, reference),
                            f"default size, {STEPS} steps after {WARMUP} warm-up",
                        )
                    )
    return rows


def bench_ray_trial(budget: Budget, keep: float, single: dict | str) -> list[Row]:
    settings = f"1 worker, default size, fp32 eager, batch 4, {STEPS} steps, {gpu_backend()}"
    timeout = budget.allow(90, keep)
    if timeout < 30:
        return [Row("Ray Train, 1 worker", SKIPPED, settings)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        command = [sys.executable, "-m", "tinyfold_ray.train", "--workers", "1", "--device", gpu_backend()]
        command += ["--output", tmp, "--study", "gpu-check", "--json", str(out), "--batch-size", "4"]
        command += ["--num-steps", str(STEPS), "--warmup-steps", str(WARMUP), *MODEL_FLAGS]
        done, seconds = run(command, timeout)
        if done is None or done.returncode != 0:
            why = f"timed out after {timeout:.0f} s" if done is None else f"failed: {last_line(done)}"
            return [Row("Ray Train, 1 worker", why, settings)]
        row = json.loads(out.read_text())
    throughput = row["throughput_samples_per_sec"]
    rows = [
        Row(
            "Ray Train, 1 worker",
            f"{throughput:.1f} samples/s ({row['device_name']}, {gib(row['peak_memory_bytes'])} peak, "
            f"fixed cost {row['overhead_s']:.1f} s)",
            settings + f"; whole command {seconds:.0f} s",
        )
    ]
    if isinstance(single, dict):
        ratio = throughput / single["throughput_samples_per_sec"]
        rows.append(Row("Ray Train 1 worker / one process", f"{ratio:.3f}", "same settings, target >= 0.97"))
    return rows


def bench_study(budget: Budget, keep: float) -> list[Row]:
    settings = f"1 GPU, default size, {STEPS} steps, {STUDY_REPEATS} repeats, {gpu_backend()}"
    timeout = budget.allow(200, keep)
    if timeout < 60:
        return [Row("one-GPU study", SKIPPED, settings)]
    study = {
        "name": "gpu-check",
        "repeats": STUDY_REPEATS,
        "resources": {"device": gpu_backend(), "cpus_per_worker": 2},
        "model": STUDY_MODEL,
        "train": {"num_steps": STEPS, "warmup_steps": WARMUP},
        "sweep": STUDY_SWEEP,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu-check.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        command = [
            sys.executable,
            "-m",
            "tinyfold_ray.study",
            str(path),
            "--output",
            str(Path(tmp) / "results"),
        ]
        done, seconds = run(command, timeout)
        if done is None:
            return [Row("one-GPU study", f"timed out after {timeout:.0f} s", settings)]
        if done.returncode not in (0, 1):  # 1: some trial failed, still summarised below
            return [Row("one-GPU study", f"failed: {last_line(done)}", settings)]
        from tinyfold_ray.results.loader import load_results
        from tinyfold_ray.results.summary import summarize

        trials = load_results(Path(tmp) / "results")
    summary = summarize(trials)
    rows = [
        Row(
            "one-GPU study",
            f"{(trials.status == 'ok').sum()}/{len(trials)} trials ok in {seconds:.0f} s",
            settings,
        )
    ]
    peaks = trials.groupby(["batch_per_worker", "amp"])["peak_memory_bytes"].max()
    for _, point in summary.sort_values(["batch_per_worker", "amp"]).iterrows():
        std = point["throughput_samples_per_sec_std"]
        peak = peaks.get((point["batch_per_worker"], point["amp"]))
        rows.append(
            Row(
                f"  study batch {point['batch_per_worker']}, amp {point['amp']}",
                f"{point['throughput_samples_per_sec_mean']:.1f}{'' if std != std else f' +- {std:.1f}'} samples/s "
                f"(n={point['n']}, {gib(peak)} peak)",
                point["note"] or "",
            )
        )
    return rows


def bench_pytest(budget: Budget) -> list[Row]:
    timeout = budget.allow(300)  # 18 tests, 7 of them compile cold
    if timeout < 30:
        return [Row("pytest -m gpu", SKIPPED, "tests/test_gpu.py")]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_gpu.py",
    ]
    done, seconds = run(command, timeout)
    if done is None:
        return [Row("pytest -m gpu", f"timed out after {timeout:.0f} s", "tests/test_gpu.py")]
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else last_line(done)
    return [Row("pytest -m gpu", summary, f"tests/test_gpu.py, {seconds:.0f} s, exit {done.returncode}")]


def format_table(rows: list[Row]) -> str:
    header = Row("figure", "value", "settings")
    widths = [max(len(getattr(r, f)) for r in [header, *rows]) for f in ("figure", "value")]
    return "\n".join(
        f"{r.figure.ljust(widths[0])}  {r.value.ljust(widths[1])}  {r.settings}".rstrip()
        for r in [header, *rows]
    )


def guarded(figure: str, work: Callable[[], list[Row]]) -> list[Row]:
    """The rows of `work`, or one row saying how it broke: one broken part never costs the table."""
    progress(figure)
    try:
        return work()
    except Exception as e:  # noqa: BLE001 - reported in the table
        return [
            Row(figure, f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}", "")
        ]


def progress(message: str) -> None:
    print(f"bench gpu: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m tinyfold_ray.bench gpu", description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=510.0, help="wall-clock budget of the whole check")
    p.add_argument(
        "--reference",
        default=None,
        help="a copy of TinyOpenFold's tiny_openfold_v1.py: time it here too and print every row's ratio to it",
    )
    args = p.parse_args(argv)
    import torch

    start = time.monotonic()
    if not torch.cuda.is_available():
        print("bench gpu: torch sees no GPU here; run it on a GPU node", file=sys.stderr)
        return 2
    print(f"machine: {describe_machine()}", flush=True)
    budget = Budget(args.budget_s)
    ray_note = ensure_ray()
    have_ray = not ray_note.startswith("missing")
    must = RESERVE["pytest"] + (RESERVE["ray"] + RESERVE["study"] if have_ray else 0)
    # Order of work: what every table needs first (eager, one compiled mode, Ray, the study, the tests),
    # then the rest of the compiled matrix in whatever time is left.
    progress("one process, eager")
    runs: dict = {}
    eager_runs(runs, budget, keep=must)
    reference = None
    if args.reference:
        progress("TinyOpenFold v1")
        reference = reference_run(args.reference, budget, keep=must)
    progress(f"one process, {mode_label(MODE_CANDIDATES[0])}")
    try_modes(runs, budget, must, modes=MODE_CANDIDATES[:1])
    later: list[Row] = []
    if have_ray:
        keep = RESERVE["study"] + RESERVE["pytest"]
        later += guarded(
            "Ray Train, 1 worker", lambda: bench_ray_trial(budget, keep, runs[("none", 4, "none")])
        )
        later += guarded("one-GPU study", lambda: bench_study(budget, RESERVE["pytest"]))
    else:
        later.append(Row("Ray Train rows and study", f"skipped: Ray {ray_note}", ""))
    later += guarded("pytest -m gpu", lambda: bench_pytest(budget))
    progress("one process, what did not fit before")
    eager_runs(runs, budget, keep=0.0)
    if args.reference and reference == SKIPPED:
        reference = reference_run(args.reference, budget, keep=0.0)
    progress("batch sweep, bf16 eager")
    batch_sweep(runs, "none", budget, keep=budget.left() / 2)  # half of what is left for the modes after
    progress("the other modes, then the batch sweep in the fastest")
    best = try_modes(runs, budget, 0.0, modes=MODE_CANDIDATES)
    if best is not None:
        batch_sweep(runs, best, budget, keep=0.0)
    compiled_matrix(runs, budget, 0.0, best)
    print(f"ray: {ray_note}; whole check {time.monotonic() - start:.0f} s of a {args.budget_s:.0f} s budget")
    rows = one_process_rows(runs, reference)
    rows += sweep_rows(runs, "none", reference) + (sweep_rows(runs, best, reference) if best else [])
    rows += reference_rows(reference, runs) if reference is not None else []
    print(format_table([*rows, *later]))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.bench.gpu", main))
