"""`python -m tinyfold_ray.summary RESULTS [--plot] [--compare A B]`: scaling tables from Parquet results.

Prints the speedup/efficiency table of every group and writes summary.parquet, summary.csv and
summary.md (with --plot the PNG figures, with --html one self-contained report.html) into
RESULTS/_summary/. With --compare A B it puts two
studies side by side and writes compare.csv and compare.md into B's _summary/. Pure pandas: no torch,
no Ray, so it runs on a laptop with the results copied over.
"""

from __future__ import annotations

import argparse
import io
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tinyfold_ray.cli import EXIT_USER_ERROR, ArgumentParser
from tinyfold_ray.errors import TinyFoldError
from tinyfold_ray.results.compare import compare, format_compare, format_compare_markdown
from tinyfold_ray.results.loader import load_results
from tinyfold_ray.results.scaling_model import add_predictions
from tinyfold_ray.results.schema import SUMMARY_DIR
from tinyfold_ray.results.storage import atomic_write_bytes, join, resolve
from tinyfold_ray.results.summary import DEFAULT_CV_THRESHOLD, summarize
from tinyfold_ray.results.tables import format_markdown, format_table

PROG = "python -m tinyfold_ray.summary"


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Speedup and efficiency tables (and plots, comparisons) from tinyfold-ray results.",
    )
    parser.add_argument(
        "results", nargs="?", help="a study directory (<output>/<study>) or an output root; path or URI"
    )
    parser.add_argument("--plot", action="store_true", help="also write PNG figures (needs matplotlib)")
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write report.html: tables and figures in one file for a browser (needs matplotlib)",
    )
    parser.add_argument(
        "--predict",
        type=int,
        nargs="+",
        default=[],
        metavar="N",
        help="also predict the efficiency at these worker counts (from the measured all-reduce time)",
    )
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="put two studies side by side; ratios are B / A"
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="SETTING",
        help="with --compare: a setting that may differ between A and B (repeatable)",
    )
    parser.add_argument("--out", help=f"write the files here instead of RESULTS/{SUMMARY_DIR} (or B's)")
    parser.add_argument(
        "--cv-threshold",
        type=float,
        default=DEFAULT_CV_THRESHOLD,
        help="flag a point as noisy above this coefficient of variation over repeats (default %(default)s)",
    )
    parser.add_argument(
        "--fallback-baseline",
        action="store_true",
        help="when a group's smallest worker count failed in every repeat, use the smallest that ran",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.results is None and args.compare is None:
        parser.error("give a RESULTS directory, or --compare A B")
    if (args.plot or args.html) and args.results is None:
        parser.error("--plot and --html need a RESULTS directory")
    try:
        if args.plot or args.html:
            from tinyfold_ray.results.plots import require_matplotlib

            require_matplotlib()  # before any work, so a missing extra costs nothing
        if args.results is not None:
            _summary(args)
        if args.compare is not None:
            _compare(args)
    except (TinyFoldError, OSError) as exc:
        # One line, like the other entry points (cli.run_main), also for a multi-line OSError.
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _summarize(trials: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    return summarize(trials, cv_threshold=args.cv_threshold, fallback_baseline=args.fallback_baseline)


def _summary(args: argparse.Namespace) -> None:
    trials = load_results(args.results)
    summary = add_predictions(_summarize(trials, args), tuple(args.predict))
    print(format_table(summary))
    out = args.out or join(args.results, SUMMARY_DIR)
    files = {
        "summary.parquet": _parquet_bytes(summary),
        "summary.csv": summary.to_csv(index=False).encode(),
        "summary.md": format_markdown(summary).encode(),
    }
    if args.plot:
        from tinyfold_ray.results.plots import render_plots

        files.update(render_plots(summary, trials=trials))
    if args.html:
        from tinyfold_ray.results.report import render_html

        files["report.html"] = render_html(summary, trials).encode()  # trials: what they ran on
    _write_files(out, files)


def _compare(args: argparse.Namespace) -> None:
    a_path, b_path = args.compare
    a, b = (_summarize(load_results(path), args) for path in (a_path, b_path))
    cmp = compare(a, b, ignore=args.ignore)
    print(format_compare(cmp))
    out = args.out or join(b_path, SUMMARY_DIR)
    _write_files(
        out,
        {
            "compare.csv": cmp.to_csv(index=False).encode(),
            "compare.md": format_compare_markdown(cmp).encode(),
        },
    )


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def _write_files(out: str, files: dict[str, bytes]) -> None:
    """Write each file to a temporary name, then rename it into place (local path or URI)."""
    fs, directory = resolve(out)
    for name, data in files.items():
        atomic_write_bytes(fs, directory, name, data)
    print(f"wrote {', '.join(files)} to {out}")


if __name__ == "__main__":
    sys.exit(main())
