"""personalize: per-user personalization of a frozen language model at decoding time."""

__version__ = "0.1.0"
