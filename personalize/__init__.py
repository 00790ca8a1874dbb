"""personalize: per-user personalization of a frozen language model at decoding time."""

import os

__version__ = "0.1.0"

# OpenMP's wait policy is left to the environment (docs/benchmarks.md measures it): spinning waiters
# are fastest on cores of their own; on a machine shared with busy processes they starve each other
# (a 12 ms step took 45-250 ms) and OMP_WAIT_POLICY=PASSIVE keeps the step near 19 ms.

# oneDNN keeps a compiled kernel for every matrix shape it has seen, up to 1,024 by default, and
# PyTorch's oneDNN layer (ideep) keeps its own per-thread cache of the same size (LRU_CACHE_CAPACITY):
# with batches and prompt chunks of ever new sizes a server's memory grew for hours before they
# filled. 16 of each hold the shapes of the steps in flight (bench/shapes.py, bench/soak.py and
# docs/benchmarks.md measure the memory and the speed: less of the one, the same of the other).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")
