"""Run a study's trials with Ray Tune: resumable, failure-tolerant, one line per finished trial (with the
study's time left) and a heartbeat line of each long-running trial."""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tinyfold_ray.config import TrialSpec
from tinyfold_ray.errors import StudyInterrupted, StudySpecError
from tinyfold_ray.ray_session import environ_defaults
from tinyfold_ray.results.safe_write import chosen_fallback_root
from tinyfold_ray.results.storage import absolute_location, is_uri, join
from tinyfold_ray.results.writer import existing_trials
from tinyfold_ray.study.expand import expand
from tinyfold_ray.study.groups import worker_groups
from tinyfold_ray.study.identity import probe
from tinyfold_ray.study.progress import HEARTBEAT_S, TimeLeft, about, heartbeat_line
from tinyfold_ray.study.resume import check_same_identity, check_unchanged
from tinyfold_ray.study.spec import StudySpec
from tinyfold_ray.train.environment import forwarded_env
from tinyfold_ray.train.heartbeat import ProgressChannel, close_board, open_board, read_progress

# Logical CPUs a Tune trial holds for its own driver (Tune refuses 0); the workers reserve their own.
TRIAL_DRIVER_CPUS = 0.01
# Tune reads these switches from the driver's environment when fit() starts and offers no other route,
# so they are set for the fit only, unless the user set them. Tune's CSV, JSON and TensorBoard loggers
# would write into the scratch folder that is removed at the end (the Parquet files are the results),
# and importing TensorBoard's writer sets a variable of its own in this process.
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
# Tune's newer console output prints tables and boxes even at verbose=0; the legacy engine does not.
LEGACY_TUNE_OUTPUT = {"RAY_AIR_NEW_OUTPUT": "0"}


@dataclass
class StudyReport:
    location: str
    planned: int
    skipped: int
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    """Trial files written to the local fallback location because the output could not be written."""
    interrupted: bool = False
    trials_wall_s: float = 0.0
    """The wall time of the trials this run ran, as their rows record it."""
    measured_s: float = 0.0
    """Their measured steps' time (wall_time_s - overhead_s of each row)."""

    def count(self, trial_id: str, status: str, wall_time_s: float | None, overhead_s: float | None) -> None:
        """Count a trial that ended in this run: ok, else failed (a lost trial has no wall time)."""
        self.trials_wall_s += wall_time_s or 0.0
        if status == "ok":
            self.ok.append(trial_id)
            self.measured_s += wall_time_s - overhead_s
        else:
            self.failed.append(trial_id)

    @property
    def not_run(self) -> int:
        return self.planned - self.skipped - len(self.ok) - len(self.failed)

    def measured_share_line(self) -> str | None:
        """The study's closing line: how much of its trials' time the measured steps took (None when
        no trial ran). Start-up and tear-down are the rest (the rows' phase columns split them)."""
        if not self.trials_wall_s:
            return None
        return (
            f"measured steps {self.measured_s / self.trials_wall_s:.1%} of the study's time "
            f"({self.measured_s:.1f} s of {self.trials_wall_s:.1f} s, the wall time of the trials run)"
        )


def plan(
    spec: StudySpec,
    output: str,
    *,
    rerun: bool = False,
    identity: Callable[[list[TrialSpec]], dict[str, dict[str, Any]]] | None = None,
) -> tuple[list[TrialSpec], list[TrialSpec]]:
    """(trials to run, trials already finished), both in run order. Failed trials run again; ok ones
    only with rerun.

    A finished trial counts only if it ran with the settings the study asks for now, and on the kind
    of machine and software its trial would get now; otherwise this raises StudySpecError naming what
    changed (resume.py). `identity` says what the finished trials would run on now (trial_id -> the
    identity columns; default: study/identity.py's probe, which joins or starts Ray). It is called
    only when there are finished trials, after their settings passed: nothing else needs Ray here.
    """
    trials = expand(spec)
    if rerun:
        return trials, []
    done = existing_trials(output, spec.name)
    finished = [t for t in trials if done.get(t.trial_id, {}).get("status") == "ok"]
    location = join(output, spec.name)
    check_unchanged(spec.source, location, finished, done)
    if finished:
        try:
            current = (identity or probe)([as_run(t) for t in finished])
        except StudySpecError as e:
            raise StudySpecError(f"{spec.source}: {e}") from None
        check_same_identity(spec.source, location, finished, done, current)
    kept = {t.trial_id for t in finished}
    return [t for t in trials if t.trial_id not in kept], finished


def as_run(trial: TrialSpec) -> TrialSpec:
    """The trial as its Tune actor gets it. Trials run in Tune actors, perhaps on other nodes: this
    driver's collective-library variables go with each spec (the study's own `env:` still wins), so
    every trial's workers get them."""
    return replace(trial, env={**forwarded_env(os.environ), **trial.env})


def check_cluster(spec: StudySpec, trials: list[TrialSpec], output: str) -> int:
    """Refuse, before the first trial, a study that cannot run on the connected cluster; return how
    many trials may run at once (max_concurrent_trials, lowered to what fits the cluster together)."""
    from tinyfold_ray.train.resources import alive_nodes, check_placement, trials_fit_together

    nodes = alive_nodes()
    if len(nodes) > 1 and not is_uri(output) and not spec.output_is_shared:
        raise StudySpecError(
            f"{spec.source}: output: {output!r} is a path on one node's disk, but the cluster has "
            f"{len(nodes)} nodes; use a URI (s3://...) or a shared filesystem path with output_is_shared: true"
        )
    for trial in trials:
        _, reason = check_placement(trial, nodes, TRIAL_DRIVER_CPUS)
        if reason:
            raise StudySpecError(f"{spec.source}: trial {trial.trial_id}: {reason}")
    # Trials running together share the cluster: a trial whose sibling holds its CPUs or GPUs would
    # wait for its worker group and fail at the start timeout. Allow only as many at once as the
    # largest trials fit together, trial drivers included.
    largest = sorted(trials, key=lambda t: t.num_workers * t.cpus_per_worker, reverse=True)
    concurrent = min(spec.max_concurrent_trials, len(trials))
    while concurrent > 1 and not trials_fit_together(largest[:concurrent], nodes, TRIAL_DRIVER_CPUS):
        concurrent -= 1
    return concurrent


def check_embedded(spec: StudySpec, trials: list[TrialSpec], num_cpus: int, where: str) -> None:
    """Refuse, before Ray starts, a trial whose workers need more CPUs than the embedded cluster of
    `num_cpus` logical CPUs (`where` names it) will have. Its size is known in advance, so a user need
    not wait for Ray to hear it. The rule is check_cluster's (train/resources.py) on the CPUs alone:
    the GPUs are Ray's to detect when it starts, and check_cluster judges them then."""
    from tinyfold_ray.train.resources import why_it_cannot_fit

    node = {"CPU": num_cpus - TRIAL_DRIVER_CPUS}
    for trial in trials:
        reason = why_it_cannot_fit(
            {"CPU": trial.cpus_per_worker}, trial.num_workers, trial.placement_strategy, [node]
        )
        if reason:
            raise StudySpecError(
                f"{spec.source}: trial {trial.trial_id}: {reason}; this is {where}: lower num_workers or "
                "cpus_per_worker, or run on a cluster (RAY_ADDRESS)"
            )


def _run_group(
    config: dict[str, Any],
    groups: dict[str, list[TrialSpec]],
    output: str,
    git_commit: str | None,
    concurrent: int = 1,
    channels: dict[str, ProgressChannel] | None = None,
    fallback_root: str | None = None,
):
    """The Tune function trainable: one worker group's trials (one trial unless the study shares worker
    groups), then one report per trial, which the progress lines read. `channels`: group -> where its
    rank 0 notes its progress (none: no heartbeat). `fallback_root`: where rows go when the output
    cannot take them (None: the trial driver's default)."""
    from ray import tune

    from tinyfold_ray.train.trial import run_trials

    group = config["group"]
    try:
        outcomes = run_trials(
            groups[group],
            output,
            git_commit=git_commit,
            reserved_cpus=TRIAL_DRIVER_CPUS * concurrent,
            progress=(channels or {}).get(group),
            fallback_root=fallback_root,
        )
    except StudyInterrupted:
        return  # Ctrl-C: Tune is stopping and reads no more results; the trials left run on resume
    for outcome in outcomes:
        row = outcome.row
        if outcome.lost is not None:  # neither the output nor the local fallback could take the rows
            tune.report({"trial": row["trial_id"], "status": "lost", "error": outcome.lost, "fallback": ""})
            continue
        tune.report(
            {
                "trial": row["trial_id"],
                "status": row["status"],
                "error": row["error"] or "",
                "fallback": outcome.fallback or "",
                "throughput_samples_per_sec": row.get("throughput_samples_per_sec") or math.nan,
                "step_time_median_s": row.get("step_time_median_s") or math.nan,
                "num_nodes": row.get("num_nodes") or 0,
                "final_loss": row.get("final_loss") or math.nan,
                "overhead_s": row.get("overhead_s") or math.nan,
                "wall_time_s": row["wall_time_s"],
            }
        )


def describe(trial: TrialSpec) -> str:
    return (
        f"w={trial.num_workers} batch/worker={trial.train.batch_size} global={trial.global_batch} "
        f"amp={trial.train.amp}"
        + (f" compile={trial.train.compile}" if trial.train.compile != "none" else "")
        + f" repeat={trial.repeat}"
    )


def run_study(
    spec: StudySpec,
    output: str,
    todo: list[TrialSpec],
    *,
    skipped: int = 0,
    git_commit: str | None = None,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
    concurrent: int | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> StudyReport:
    """Run `todo` (already planned and checked) on the connected Ray cluster, `concurrent` trials at
    once (default: the study's max_concurrent_trials; check_cluster says how many fit).

    `progress` gets one line per finished trial, ending with the study's time left, and every
    `heartbeat_s` seconds (0: never) one line per running trial: its phase and step, from rank 0.

    A relative `output` is made absolute here, in the driver: each trial runs in a working directory
    of Tune's own, where a relative path would land in Ray's temporary files.
    """
    output = absolute_location(output)
    if not verbose:
        # Tune's warnings on interrupt ("Resume experiment with Tuner.restore...") would mislead:
        # rerunning the study is how it resumes.
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
    from ray import tune

    report = StudyReport(location=join(output, spec.name), planned=len(todo) + skipped, skipped=skipped)
    if not todo:
        return report
    specs = {t.trial_id: as_run(t) for t in todo}
    # One Tune trial per worker group, named after its first trial (groups.py: one trial unless shared).
    groups = {g[0].trial_id: [specs[t.trial_id] for t in g] for g in worker_groups(todo)}
    group_of = {t.trial_id: name for name, group in groups.items() for t in group}
    concurrent = concurrent or spec.max_concurrent_trials
    order = {t.trial_id: i for i, t in enumerate(todo, start=1)}
    # One board per driver run: every group's ranks send their heartbeats there, for its watchdog and
    # these heartbeat lines.
    board = open_board()
    # Signal handlers belong to the main thread (Tune installs its Ctrl-C handler only there).
    in_main_thread = threading.current_thread() is threading.main_thread()
    channels = {name: ProgressChannel(board, name) for name in groups}
    time_left = TimeLeft(concurrent)
    started: dict[str, float] = {}  # running group -> when its current trial started (time.monotonic())
    beaten: dict[str, float] = {}  # running group -> when its last heartbeat line was printed

    def ended_so_far() -> set[str]:
        return set(report.ok) | set(report.failed)

    def current(name: str) -> str:
        """The running group's trial that has not ended yet."""
        ended = ended_so_far()
        return next(t.trial_id for t in groups[name] if t.trial_id not in ended)

    def ended(tid: str, wall_s: float | None) -> str:
        """Note that `tid` ended after `wall_s` (None: unknown); the line's ending: the study's time
        left, when any is."""
        now = time.monotonic()
        name = group_of[tid]
        time_left.finished(specs[tid], wall_s if wall_s is not None else now - started.get(name, now))
        done = ended_so_far()
        if all(t.trial_id in done for t in groups[name]):
            started.pop(name, None)
            beaten.pop(name, None)
        else:
            started[name] = now  # its next trial begins
        waiting = [t for t in todo if t.trial_id not in done]
        left = time_left.left_s(waiting, {current(g): now - t for g, t in started.items()})
        return f"; {about(left)} left" if waiting and left is not None else ""

    class Progress(tune.Callback):
        def setup(self, **info):
            # Tune installed its Ctrl-C handler before this: it stops its loop, then gives each running
            # trial's driver 10 s before it kills the actor. Telling the drivers first (the board)
            # ends their fits within about a second, without rows.
            tunes_handler = signal.getsignal(signal.SIGINT)
            if callable(tunes_handler) and in_main_thread:

                def stop_trials_then(signum, frame):
                    board.stop.remote()
                    tunes_handler(signum, frame)

                signal.signal(signal.SIGINT, stop_trials_then)

        def on_trial_start(self, iteration, trials, trial, **info):
            name = trial.config["group"]
            started[name] = beaten[name] = time.monotonic()

        def on_step_end(self, iteration, trials, **info):
            # Tune's loop calls this every ~0.1 s; one read of the board per running group per interval.
            now = time.monotonic()
            for name in [g for g, last in beaten.items() if heartbeat_s and now - last >= heartbeat_s]:
                beaten[name] = now
                note = read_progress(board, name)
                # A shared group's rank 0 names the trial it runs; its line comes when the group ends.
                tid = note["trial"] if note and note.get("trial") in specs else current(name)
                progress(heartbeat_line(f"[{order[tid]}/{len(todo)}]", specs[tid], note, now - started[name]))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = result["trial"]  # Tune sets a "trial_id" of its own
            wall_s = result.get("wall_time_s")
            report.count(tid, result["status"], wall_s, result.get("overhead_s"))
            n = f"[{order[tid]}/{len(todo)}]"
            if result.get("fallback"):
                report.fallbacks.append(result["fallback"])
                progress(
                    f"{n} {tid:<28} output not writable: rows kept in the fallback file {result['fallback']}"
                )
            if result["status"] == "ok":
                progress(
                    f"{n} {tid:<28} {describe(specs[tid])}: {result['throughput_samples_per_sec']:8.2f} samples/s "
                    f"(step {result['step_time_median_s'] * 1e3:.1f} ms, {result['num_nodes']} node(s), "
                    f"loss {result['final_loss']:.3f}, fixed cost {result['overhead_s']:.1f} s)  ok"
                    + ended(tid, wall_s)
                )
            else:
                progress(
                    f"{n} {tid:<28} {describe(specs[tid])}: FAILED: {result['error']}{ended(tid, wall_s)}"
                )

        def on_trial_error(self, iteration, trials, trial, **info):
            done = ended_so_far()
            for tid in [t.trial_id for t in groups[trial.config["group"]] if t.trial_id not in done]:
                report.failed.append(tid)
                progress(
                    f"[{order[tid]}/{len(todo)}] {tid:<28} FAILED: the trial driver crashed (see Ray logs)"
                    + ended(tid, None)
                )

    trainable = tune.with_resources(
        tune.with_parameters(
            _run_group,
            groups=groups,
            output=output,
            git_commit=git_commit,
            concurrent=concurrent,
            channels=channels,
            fallback_root=chosen_fallback_root(),
        ),
        {"CPU": TRIAL_DRIVER_CPUS},
    )
    # Tune's own experiment state is scratch: the Parquet files are the results.
    scratch = tempfile.mkdtemp(prefix="tinyfold-tune-")
    tuner = tune.Tuner(
        trainable,
        # A grid of one axis runs in list order: the study's run order (expand), which rows record.
        param_space={"group": tune.grid_search(list(groups))},
        # One trial-driver actor serves trial after trial, instead of a new process (and its imports)
        # per trial: the 4-trial cpu-smoke study took 55 s instead of 70 s on 2 cores.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{int(time.time())}", storage_path=scratch, verbose=0, callbacks=[Progress()]
        ),
    )
    # A shared group's trials report when the group ends: after a Ctrl-C, those that ended before it are
    # found by their rows, which they wrote as they ended.
    shared = any(len(group) > 1 for group in groups.values())
    rows_before = _row_starts(output, spec.name) if shared else {}
    callers_handler = signal.getsignal(signal.SIGINT)
    try:
        with environ_defaults({**TUNE_ENV, **({} if verbose else LEGACY_TUNE_OUTPUT)}):
            tuner.fit()
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, callers_handler)  # neither Tune's handler nor ours outlives the run
        shutil.rmtree(scratch, ignore_errors=True)
        close_board(board)
    if report.not_run and not report.interrupted:
        # Tune stops early on SIGINT without raising: trials that never reported did not run.
        report.interrupted = True
    if report.interrupted and shared:
        _count_unreported_rows(report, todo, output, spec.name, rows_before)
    return report


def _row_starts(output: str, study: str) -> dict[str, Any]:
    """trial_id -> the start time of its latest row in the output."""
    return {tid: row.get("start_time") for tid, row in existing_trials(output, study).items()}


def _count_unreported_rows(
    report: StudyReport, todo: list[TrialSpec], output: str, study: str, before: dict[str, Any]
) -> None:
    """Count in `report` the trials of `todo` that wrote a row during the run (its start time is not the
    one `before` the run) but never reported it: a shared group's trials that ended before a Ctrl-C."""
    reported = set(report.ok) | set(report.failed)
    rows = existing_trials(output, study)
    for trial in todo:
        row = rows.get(trial.trial_id)
        if trial.trial_id in reported or row is None or row.get("start_time") == before.get(trial.trial_id):
            continue
        report.count(trial.trial_id, row["status"], row.get("wall_time_s"), row.get("overhead_s"))


def print_line(message: str) -> None:
    """A progress line, flushed at once (under `ray job submit` stdout is a pipe to the job log)."""
    print(message, flush=True)
