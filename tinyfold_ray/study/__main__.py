"""`python -m tinyfold_ray.study STUDY.yaml`: run a scaling study and summarise it."""

import sys

from tinyfold_ray.cli import run_main
from tinyfold_ray.study.cli import main

if __name__ == "__main__":
    sys.exit(run_main("tinyfold_ray.study", main))
