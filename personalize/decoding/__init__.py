"""Steered decoding: per-request configuration, the batched engine and its methods."""

from personalize.decoding.config import (
    METHODS,
    GenerationRequest,
    GenerationResult,
    Personalization,
    SamplingParams,
    StreamEvent,
)
from personalize.decoding.engine import Engine

__all__ = [
    "METHODS",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "Personalization",
    "SamplingParams",
    "StreamEvent",
]
