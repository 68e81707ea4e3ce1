"""Studies: YAML -> validated spec -> expanded trials -> Ray Tune run, resumable."""

from tinyfold_ray.study.expand import expand
from tinyfold_ray.study.spec import StudySpec, load_study, parse_study

__all__ = ["StudySpec", "expand", "load_study", "parse_study"]
