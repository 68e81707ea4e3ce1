"""Results: the Parquet contract, its writer and loader, and the pandas summary (no torch, no Ray)."""

from tinyfold_ray.results.loader import load_results
from tinyfold_ray.results.summary import summarize

__all__ = ["load_results", "summarize"]
