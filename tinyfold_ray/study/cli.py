"""Flags of `python -m tinyfold_ray.study`."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

from tinyfold_ray.cli import ArgumentParser
from tinyfold_ray.results.storage import absolute_location, is_uri
from tinyfold_ray.study.expand import expand
from tinyfold_ray.study.progress import HEARTBEAT_S
from tinyfold_ray.study.spec import load_study

EXIT_TRIAL_FAILED = 1
EXIT_ROWS_IN_FALLBACK = 3
EXIT_INTERRUPTED = 130


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m tinyfold_ray.study",
        description="Run a scaling study: every trial of the study file's sweep, on an embedded Ray or on "
        "the cluster in RAY_ADDRESS. Finished trials are kept and skipped when the study runs again.",
    )
    p.add_argument("study", help="study file (YAML), e.g. studies/cpu-smoke.yaml")
    p.add_argument("--output", default=None, help="results location, a path or URI (default: the study's)")
    p.add_argument("--dry-run", action="store_true", help="print the trial table; start nothing")
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run finished trials again (earlier attempts are kept under _attempts/)",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own logs")
    p.add_argument(
        "--progress-every",
        type=_seconds,
        default=HEARTBEAT_S,
        metavar="SECONDS",
        help=f"print each running trial's phase and step this often (default: {HEARTBEAT_S:g}; 0: never)",
    )
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = load_study(args.study)
    given = args.output or spec.output
    # One resolved location for the resume scan, every trial, the summary and what is printed.
    output = absolute_location(given)

    if args.dry_run:
        _print_dry_run(spec, output, rerun=args.rerun)
        return 0

    from tinyfold_ray.study.lock import study_lock
    from tinyfold_ray.study.runner import print_line

    if not os.environ.get("RAY_ADDRESS"):
        from tinyfold_ray.ray_session import describe_embedded, embedded_cpus
        from tinyfold_ray.study.runner import check_embedded

        # Before the lock, the resume scan and Ray's start: the embedded cluster's size is known now.
        check_embedded(spec, expand(spec), embedded_cpus(), describe_embedded(embedded_cpus()))

    warning = job_working_dir_warning(given, output)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    # One driver per study and output, from before the resume scan to the end.
    with study_lock(output, spec.name, say=print_line):
        return _run(args, spec, output)


def _run(args, spec, output: str) -> int:
    from tinyfold_ray.ray_session import connect
    from tinyfold_ray.results.provenance import git_commit
    from tinyfold_ray.results.safe_write import check_writable
    from tinyfold_ray.study.identity import probe
    from tinyfold_ray.study.runner import check_cluster, plan, print_line, run_study

    # Ray starts (or is joined) once, when first needed: to check what finished trials ran on
    # against the cluster (plan), or to run trials.
    connected = functools.cache(lambda: connect(verbose=args.verbose))
    todo, finished = plan(spec, output, rerun=args.rerun, identity=lambda trials: probe(trials, connected))
    if finished:
        print_line(f"resuming: {len(finished)} finished trial(s) kept and skipped")
    concurrent = None
    if todo:
        print_line(f"study {spec.name}: {len(todo)} trial(s) to run on {connected()}")
        concurrent = check_cluster(spec, todo, output)
        if concurrent < spec.max_concurrent_trials:
            print_line(
                f"max_concurrent_trials {spec.max_concurrent_trials} lowered to {concurrent}: "
                "no more of the largest trials fit the cluster together"
            )
        check_writable(output, spec.name)
    report = run_study(
        spec,
        output,
        todo,
        skipped=len(finished),
        git_commit=git_commit(),
        progress=print_line,
        verbose=args.verbose,
        concurrent=concurrent,
        heartbeat_s=args.progress_every,
    )
    _print_summary(report.location)
    closing = report.measured_share_line()
    if closing:
        print_line(closing)
    codes = []
    if report.failed:
        print_line(f"{len(report.failed)} trial(s) failed: {', '.join(report.failed)}")
        codes.append(EXIT_TRIAL_FAILED)
    if report.interrupted:
        print_line(f"interrupted: {report.not_run} trial(s) not run; run the same command again to resume")
        codes.append(EXIT_INTERRUPTED)
    if report.fallbacks:
        # Last, so that it is the line a user sees: measured data is outside the output.
        print_line(
            f"{len(report.fallbacks)} trial(s) could not be written to {output!r}; their rows are in "
            f"{', '.join(report.fallbacks)} (copy that study folder into the output to complete it)"
        )
        codes.append(EXIT_ROWS_IN_FALLBACK)
    # Rows outside the output matter most, then an interruption, then failed trials.
    for code in (EXIT_ROWS_IN_FALLBACK, EXIT_INTERRUPTED, EXIT_TRIAL_FAILED):
        if code in codes:
            return code
    return 0


def _print_dry_run(spec, output: str, *, rerun: bool) -> None:
    """The trial table, each trial marked `done` when a finished row of it is already in `output` (read
    from disk: nothing starts), as a run would skip it."""
    from tinyfold_ray.results.writer import existing_trials

    trials = expand(spec)
    rows = existing_trials(output, spec.name)
    status = {t.trial_id: rows.get(t.trial_id, {}).get("status") for t in trials}
    done = sum(s == "ok" for s in status.values())
    skipped = "--rerun runs them again" if rerun else "a run skips them"
    print(
        f"study {spec.name}: {len(trials)} trials ({spec.scaling} scaling, {spec.repeats} repeat(s)), "
        f"in the order they run (order_seed {spec.order_seed})"
        + (f"; {done} already done in {output} ({skipped})" if done else "")
    )
    marks = {"ok": "done, runs again" if rerun else "done, skipped", "failed": "failed, runs again"}
    width = max(32, *(len(t.trial_id) for t in trials))
    print(f"{'order':>5} {'trial':<{width}} {'workers':>7} {'batch/worker':>12} {'global':>6}  amp   state")
    for t in trials:
        print(
            f"{t.run_order:>5} {t.trial_id:<{width}} {t.num_workers:>7} {t.train.batch_size:>12} "
            f"{t.global_batch:>6}  {t.train.amp:<5} {marks.get(status[t.trial_id], 'to run')}"
        )


def job_working_dir_warning(given: str, resolved: str) -> str | None:
    """A warning when a relative output would land in a `ray job submit --working-dir` job's folder.

    The job supervisor hands its driver the job's runtime environment in this variable; with a
    working_dir, the driver runs in Ray's temporary copy of it, which Ray deletes with the job.
    """
    if is_uri(given) or os.path.isabs(os.path.expanduser(given)):
        return None
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if not (job.get("runtime_env") or {}).get("working_dir"):
        return None
    return (
        f"warning: output {given!r} is relative, so the results go to {resolved}, inside the job's "
        "temporary working directory that Ray deletes with the job; give an absolute path on shared "
        "storage or a URI (--output)"
    )


def _print_summary(location: str) -> None:
    from tinyfold_ray.errors import TinyFoldError
    from tinyfold_ray.results import load_results, summarize
    from tinyfold_ray.results.tables import format_table

    print(f"results: {location}  (pandas: pd.read_parquet({location!r}))")
    try:
        print(format_table(summarize(load_results(location))))
    except (TinyFoldError, OSError) as e:  # OSError: the output itself failed (see the fallback line)
        print(f"no summary: {e}", file=sys.stderr)
