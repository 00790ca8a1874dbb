"""Steered decoding: per-request configuration, the batched engine and its methods."""

from personalize.decoding.config import (
    METHODS,
    AISPParams,
    Compute,
    GenerationRequest,
    GenerationResult,
    IVGParams,
    Personalization,
    SamplingParams,
    StreamEvent,
)
from personalize.decoding.engine import Engine

__all__ = [
    "METHODS",
    "AISPParams",
    "Compute",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "IVGParams",
    "Personalization",
    "SamplingParams",
    "StreamEvent",
]
