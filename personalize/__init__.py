"""personalize: per-user personalization of a frozen language model at decoding time."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait by spinning (the default) starve each other as soon as another process
# wants the CPU: a decode step that takes ~19 ms takes 150-250 ms on a machine with one other busy
# process (bench/steps.py measures both policies). Waiting threads sleep instead, unless the
# environment says otherwise; it takes effect only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
