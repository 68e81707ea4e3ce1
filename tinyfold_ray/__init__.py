"""tinyfold-ray: scaling studies of Evoformer training on Ray Train and Ray Tune.

The analysis API (`load_results`, `summarize`) is pure pandas: importing it needs neither torch nor Ray.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_results", "summarize"]


def __getattr__(name):
    # Lazy, so `import tinyfold_ray` stays cheap and torch-free for analysis on a laptop.
    if name in ("load_results", "summarize"):
        from tinyfold_ray import results

        return getattr(results, name)
    raise AttributeError(f"module 'tinyfold_ray' has no attribute {name!r}")
