"""Benchmarks: each script prints its figures from one run (see docs/benchmarks.md)."""

import personalize  # noqa: F401  # before torch loads: OpenMP's wait policy as the service sets it
