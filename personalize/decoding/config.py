"""Per-request decoding parameters: what a caller asks for, validated on construction.

These frozen dataclasses are the contract between callers (CLI, HTTP service,
evaluation) and the decoding engine. Every bound is checked in ``__post_init__``
and a bad value raises :class:`~personalize.errors.ConfigError` naming the field,
the value received and the valid range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from personalize.errors import ConfigError

METHODS: tuple[str, ...] = ("base", "vas", "bon")
"""Decoding strategies known to the engine (see ``personalize.decoding.strategies``)."""

WEIGHT_RANGE = (-5.0, 5.0)
BETA_RANGE = (0.0, 50.0)
TOP_K_RANGE = (1, 200)
TEMPERATURE_RANGE = (0.0, 5.0)
BEST_OF_RANGE = (1, 64)
DEFAULT_BETA = 1.0
DEFAULT_TOP_K = 20

FinishReason = Literal["stop", "length"]


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn once the scores are final (applied after value guidance).

    ``temperature == 0`` means greedy. ``seed`` makes a request reproducible on its
    own, whatever else is in its batch; ``None`` picks a random seed.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    """Keep generating past end-of-sequence (benchmarks that need a fixed length)."""
    top_k: int = 0
    """Sample only among the k highest final scores (0: no filter). Distinct from the guidance top-k."""

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check_range("temperature", self.temperature, TEMPERATURE_RANGE)
        _check_range("top_p", self.top_p, (0.0, 1.0))
        if self.top_p <= 0.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"stop must be non-empty strings, got {self.stop!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or not 0 <= self.top_k <= 1000:
            raise ConfigError(f"sampling top_k must be an integer in [0, 1000] (0 = off), got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63
        ):
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")


@dataclass(frozen=True)
class Personalization:
    """Which objectives steer a request and how strongly.

    ``weights`` maps objective names to weights in ``WEIGHT_RANGE``; a weight of
    1.0 means the same strength for every objective (heads are calibrated).
    All-zero weights, or ``method="base"``, reproduce plain decoding exactly.
    ``best_of`` is N for ``method="bon"``.
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    beta: float = DEFAULT_BETA
    method: str = "vas"
    top_k: int = DEFAULT_TOP_K
    best_of: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Mapping):
            raise ConfigError(f"weights must be a mapping of objective name to number, got {self.weights!r}")
        clean: dict[str, float] = {}
        for name, w in self.weights.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"objective names must be non-empty strings, got {name!r}")
            _check_range(f"weights[{name!r}]", w, WEIGHT_RANGE)
            clean[name] = float(w)
        object.__setattr__(self, "weights", MappingProxyType(clean))
        _check_range("beta", self.beta, BETA_RANGE)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, value, (lo, hi) in (("top_k", self.top_k, TOP_K_RANGE), ("best_of", self.best_of, BEST_OF_RANGE)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

    @property
    def active_weights(self) -> dict[str, float]:
        """The objectives that actually steer (non-zero weight, and only for ``vas``)."""
        if self.method == "base" or self.beta == 0.0:
            return {}
        return {k: w for k, w in self.weights.items() if w != 0.0}

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": dict(self.weights),
            "beta": self.beta,
            "method": self.method,
            "top_k": self.top_k,
            "best_of": self.best_of,
        }


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (already tokenized) with its sampling and personalization."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    personalization: Personalization = field(default_factory=Personalization)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ConfigError("prompt_ids must hold at least one token")
        object.__setattr__(self, "prompt_ids", tuple(int(t) for t in self.prompt_ids))


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    personalization: Personalization
    head_versions: Mapping[str, str]
    forward_rows: int
    """Batch-row forwards spent on this request: rows x decode steps (a prefill counts as one step)."""
    processed_tokens: int = 0
    """Tokens pushed through the backbone for this request (rows x (prompt + generated)); FLOPs ~ 2 x params x this."""
    reward: float | None = None
    """Best-of-N only: the winning sample's weighted reward."""

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class StreamEvent:
    """One step of a streamed generation for one request of the batch."""

    index: int
    token_id: int
    text: str
    """Newly printable text (may be empty while a multi-byte character is incomplete)."""
    finish_reason: FinishReason | None = None
    logprob: float | None = None
    """Log-probability of ``token_id`` under the value-guided scores (after any sampling top-k filter,
    before temperature and top-p)."""
    contributions: Mapping[str, float] = field(default_factory=dict)
    """How much each steering objective raised (or lowered) this token's score: beta · w · z."""
