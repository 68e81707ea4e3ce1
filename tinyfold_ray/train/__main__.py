"""`python -m tinyfold_ray.train`: one trial, in one process or on N Ray Train workers."""

import sys

from tinyfold_ray.cli import run_main
from tinyfold_ray.train.cli import main

if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.train", main))
