"""Benchmarks that print figures with their machine and settings (never timed unit tests)."""
