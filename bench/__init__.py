"""Benchmarks: each script prints its figures from one run (see docs/benchmarks.md)."""

import personalize  # noqa: F401  # before torch loads: oneDNN's cache as the service sets it
