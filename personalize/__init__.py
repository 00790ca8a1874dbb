"""personalize: per-user personalization of a frozen language model at decoding time."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait by spinning starve each other as soon as another process wants the CPU:
# plain decoding at batch 1 took 44.7 ms/token beside one busy process against 18.0 ms with waiting
# threads asleep, and 150-250 ms beside several. Asleep costs on an idle machine (12.2 -> 19.4 ms):
# a server with cores of its own runs faster with OMP_WAIT_POLICY=ACTIVE (bench/steps.py measures
# both). Takes effect only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# oneDNN keeps a compiled kernel for every matrix shape it has seen, up to 1,024 by default: with
# batches and prompt chunks of ever new sizes a server's memory grew for hours before that filled.
# 64 holds every shape of the steps in flight (bench/soak.py measures the memory it settles at).
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
