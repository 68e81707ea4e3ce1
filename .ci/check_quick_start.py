"""Check that a study's results hold exactly one ok row per planned trial: `check_quick_start.py STUDY DIR`."""

import sys

import pandas as pd

from tinyfold_ray.study.expand import expand
from tinyfold_ray.study.spec import load_study


def main(study_file: str, results: str) -> int:
    planned = sorted(t.trial_id for t in expand(load_study(study_file)))
    rows = pd.read_parquet(results)
    ok = sorted(rows.loc[rows.status == "ok", "trial_id"])
    if ok != planned or len(rows) != len(planned):
        print(f"quick start: expected one ok row for each of {planned} in {results}, found:", file=sys.stderr)
        print(rows[["trial_id", "status", "error"]].to_string(), file=sys.stderr)
        return 1
    print(f"quick start: {len(ok)} ok trial(s) in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
