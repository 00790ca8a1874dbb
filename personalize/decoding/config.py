"""Per-request decoding parameters: what a caller asks for, validated on construction.

These frozen dataclasses are the contract between callers (CLI, HTTP service,
evaluation) and the decoding engine. Every bound is checked in ``__post_init__``
and a bad value raises :class:`~personalize.errors.ConfigError` naming the field,
the value received and the valid range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from personalize.errors import ConfigError

METHODS: tuple[str, ...] = ("base", "vas", "bon", "ivg", "aisp")
"""Decoding strategies known to the engine (see ``personalize.decoding.methods``)."""

WEIGHT_RANGE = (-5.0, 5.0)
BETA_RANGE = (0.0, 50.0)
TOP_K_RANGE = (1, 200)
TEMPERATURE_RANGE = (0.0, 5.0)
BEST_OF_RANGE = (1, 64)
DEFAULT_BETA = 1.0
DEFAULT_TOP_K = 20
IVG_CANDIDATES_RANGE = (1, 16)
IVG_BEAMS_RANGE = (1, 16)
IVG_CHUNK_RANGE = (1, 1024)
IVG_MAX_SEQUENCES = 64
AISP_SIGMA_RANGE = (0.0, 10.0)
AISP_LAMBDA_RANGE = (1e-3, 100.0)
AISP_SAMPLES_RANGE = (1, 64)
AISP_ITERATIONS_RANGE = (1, 16)
AISP_MAX_SAMPLES = 256
CHUNK_TOKENS_RANGE = (1, 64)
TOP_LOGPROBS_RANGE = (0, 20)
LOGIT_BIAS_RANGE = (-100.0, 100.0)
LOGIT_BIAS_MAX = 300

FinishReason = Literal["stop", "length"]


def _check_range(name: str, value: float, bounds: tuple[float, float]) -> None:
    lo, hi = bounds
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")


def _check_int(name: str, value: int, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


_Params = TypeVar("_Params", "IVGParams", "AISPParams")


def _nested(kind: type[_Params], value: object, name: str) -> _Params:
    """Accept the dataclass itself or a mapping of its fields (e.g. a JSON object)."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be an object with fields {_field_names(kind)}, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in _field_names(kind))
    if unknown:
        raise ConfigError(f"{name} has unknown field(s) {', '.join(unknown)}; valid fields: {_field_names(kind)}")
    return kind(**value)


def _field_names(kind: type[Any]) -> str:
    return ", ".join(f.name for f in fields(kind))


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
    top_logprobs: int = 0
    """Report this many most likely alternatives (with log-probabilities) at every position (0..20)."""
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    """Token id -> bias added to the base model's logits before the top-k and the guidance (as OpenAI's)."""

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
        _check_int("top_logprobs", self.top_logprobs, TOP_LOGPROBS_RANGE)
        object.__setattr__(self, "logit_bias", MappingProxyType(_logit_bias(self.logit_bias)))


def _logit_bias(bias: object) -> dict[int, float]:
    """A checked copy of ``logit_bias``: at most LOGIT_BIAS_MAX entries, token id >= 0 -> bias in [-100, 100]."""
    if not isinstance(bias, Mapping):
        raise ConfigError(f"logit_bias must map token ids to numbers, got {bias!r}")
    if len(bias) > LOGIT_BIAS_MAX:
        raise ConfigError(f"logit_bias may hold at most {LOGIT_BIAS_MAX} tokens, got {len(bias)}")
    clean: dict[int, float] = {}
    for token, value in bias.items():
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ConfigError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        _check_range(f"logit_bias[{token}]", value, LOGIT_BIAS_RANGE)
        clean[token] = float(value)
    return clean


@dataclass(frozen=True)
class IVGParams:
    """Integrated Value Guidance (``method="ivg"``): implicit token-level guidance plus chunk-level search.

    Token level: every weighted ``implicit`` head adds ``beta · implicit_weight · w · z`` over the base
    top-k, ``z`` its centred log-ratio ``log pi_tuned - log pi_base``. Chunk level: each of ``beams``
    beams samples ``candidates`` continuations of ``chunk_tokens`` tokens; the weighted explicit
    (``lora``/``linear``) heads score each partial response by the value of its last token, and the best
    ``beams`` of them continue. ``candidates = beams = 1`` is token-level guidance alone (and streams).
    """

    candidates: int = 2
    """C: continuations sampled per beam at each chunk."""
    chunk_tokens: int = 16
    """L: tokens per chunk before candidates are compared."""
    beams: int = 2
    """B: partial responses kept after each chunk."""
    implicit_weight: float = 1.0
    """Multiplies the weights of implicit heads at the token level (0: chunk-level search only)."""

    def __post_init__(self) -> None:
        _check_int("ivg.candidates", self.candidates, IVG_CANDIDATES_RANGE)
        _check_int("ivg.chunk_tokens", self.chunk_tokens, IVG_CHUNK_RANGE)
        _check_int("ivg.beams", self.beams, IVG_BEAMS_RANGE)
        _check_range("ivg.implicit_weight", self.implicit_weight, WEIGHT_RANGE)
        if self.sequences > IVG_MAX_SEQUENCES:
            raise ConfigError(
                f"ivg.beams x ivg.candidates must be at most {IVG_MAX_SEQUENCES} sequences per request, "
                f"got {self.beams} x {self.candidates} = {self.sequences}"
            )

    @property
    def sequences(self) -> int:
        """Sequences decoded in parallel for one request (B x C)."""
        return self.beams * self.candidates


@dataclass(frozen=True)
class AISPParams:
    """Adaptive importance sampling on pre-logits (``method="aisp"``).

    Each of ``iterations`` rounds samples ``samples`` responses with ``v ~ N(mu, sigma^2 I)`` added to
    the final hidden state before the LM head at every response position, scores them with the weighted
    rewards, and moves ``mu`` to their mean weighted by ``softmax(reward / lam)``. The best sample seen
    is returned. ``sigma = 0`` samples the base model.
    """

    sigma: float = 0.5
    lam: float = 0.1
    """Temperature of the importance weights (lambda): small trusts the best sample, large averages."""
    samples: int = 4
    """N: responses per iteration (decoded as one batch)."""
    iterations: int = 4
    """I: rounds of sampling and updating mu."""

    def __post_init__(self) -> None:
        _check_range("aisp.sigma", self.sigma, AISP_SIGMA_RANGE)
        _check_range("aisp.lam", self.lam, AISP_LAMBDA_RANGE)
        _check_int("aisp.samples", self.samples, AISP_SAMPLES_RANGE)
        _check_int("aisp.iterations", self.iterations, AISP_ITERATIONS_RANGE)
        if self.total > AISP_MAX_SAMPLES:
            raise ConfigError(
                f"aisp.samples x aisp.iterations must be at most {AISP_MAX_SAMPLES}, "
                f"got {self.samples} x {self.iterations} = {self.total}"
            )

    @property
    def total(self) -> int:
        """Responses sampled for one request (N x I)."""
        return self.samples * self.iterations


@dataclass(frozen=True)
class Personalization:
    """Which objectives steer a request and how strongly.

    ``weights`` maps objective names to weights in ``WEIGHT_RANGE``; a weight of
    1.0 means the same strength for every objective (heads are calibrated).
    All-zero weights, or ``method="base"``, reproduce plain decoding exactly.
    ``best_of`` is N for ``method="bon"``; ``ivg`` and ``aisp`` hold those methods' parameters
    (a mapping of their fields is accepted too).
    """

    weights: Mapping[str, float] = field(default_factory=dict)
    beta: float = DEFAULT_BETA
    method: str = "vas"
    top_k: int = DEFAULT_TOP_K
    best_of: int = 4
    ivg: IVGParams = field(default_factory=IVGParams)
    aisp: AISPParams = field(default_factory=AISPParams)
    within_top_k: bool = False
    """Sample only among the base model's ``top_k`` candidates (the support a remote base model's top-k
    offers); by default every other token keeps its base probability and stays sampleable."""
    chunk_tokens: int | None = None
    """Remote base model only: tokens the upstream proposes per call (None: chosen from the observed
    acceptance, see ``personalize.remote.speculative.chunk_length``; 1 is per-token remote VAS)."""

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
        _check_int("top_k", self.top_k, TOP_K_RANGE)
        _check_int("best_of", self.best_of, BEST_OF_RANGE)
        object.__setattr__(self, "ivg", _nested(IVGParams, self.ivg, "ivg"))
        object.__setattr__(self, "aisp", _nested(AISPParams, self.aisp, "aisp"))
        if self.chunk_tokens is not None:
            _check_int("chunk_tokens", self.chunk_tokens, CHUNK_TOKENS_RANGE)
        if not isinstance(self.within_top_k, bool):
            raise ConfigError(f"within_top_k must be true or false, got {self.within_top_k!r}")

    @property
    def active_weights(self) -> dict[str, float]:
        """The objectives that actually steer or rank (non-zero weight; none for ``base``, none at beta 0)."""
        if self.method == "base" or self.beta == 0.0:
            return {}
        return self.nonzero_weights

    @property
    def nonzero_weights(self) -> dict[str, float]:
        """Objectives with a non-zero weight, whatever the method and beta (what rewards and chunk scores use)."""
        return {k: w for k, w in self.weights.items() if w != 0.0}

    def to_dict(self) -> dict[str, object]:
        """The applied settings; a method's own parameters only when it is the method in use."""
        out: dict[str, object] = {
            "weights": dict(self.weights),
            "beta": self.beta,
            "method": self.method,
            "top_k": self.top_k,
            "best_of": self.best_of,
        }
        if self.method == "ivg":
            out["ivg"] = asdict(self.ivg)
        if self.method == "aisp":
            out["aisp"] = asdict(self.aisp)
        if self.chunk_tokens is not None:
            out["chunk_tokens"] = self.chunk_tokens
        if self.within_top_k:
            out["within_top_k"] = True
        return out


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
class Compute:
    """What one request cost, summed over every sequence it decoded (kept, discarded or superseded)."""

    forwards: int = 0
    """Batched model forwards the request took part in: its sequential depth (prefills included)."""
    forward_rows: int = 0
    """Batch-row forwards: each of its sequences' rows (base + one per LoRA head) x the forwards it took part in.
    A prefill shared by a request's sequences with the same prompt counts once."""
    processed_tokens: int = 0
    """Tokens pushed through the backbone: rows x (prompt tokens prefilled + tokens generated)."""
    flops: float = 0.0
    """Estimate: 2 x backbone parameters x ``processed_tokens`` (rows sharing lower layers counted in full;
    value outputs, perturbations and reward functions not counted)."""
    samples: int = 1
    """Sequences sampled: 1 (base, vas), N (bon), candidate chunks (ivg), N x I (aisp)."""
    upstream_calls: int = 0
    """Remote base model: requests sent to the upstream engine (0 when the model runs here)."""
    upstream_tokens: int = 0
    """Remote: tokens the upstream proposed (speculative chunks; rejected ones included)."""
    accepted_tokens: int = 0
    """Remote: proposed tokens accepted as they were (the others were replaced or dropped)."""


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    personalization: Personalization
    head_versions: Mapping[str, str]
    compute: Compute = field(default_factory=Compute)
    reward: float | None = None
    """Best-of-N and AISP: the returned sample's weighted reward."""
    logprobs: tuple[float, ...] = ()
    """Log-probability of each sampled token (EOS included) under its final scores (see ``TokenLogprob``)."""
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()
    """Per sampled token, its position's most likely alternatives (``SamplingParams.top_logprobs`` of them)."""
    stop_token_id: int | None = None
    """The end-of-sequence token that ended the response (left out of ``token_ids``); None when it ended
    otherwise (length, a stop string). A model may have several (e.g. end of turn and end of text)."""

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def forward_rows(self) -> int:
        """Batch-row forwards spent on this request (see :class:`Compute`)."""
        return self.compute.forward_rows

    @property
    def processed_tokens(self) -> int:
        """Tokens pushed through the backbone for this request; FLOPs ~ 2 x params x this."""
        return self.compute.processed_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability and the most likely alternatives at its position.

    Under the distribution the token was drawn from: the final (value-guided) scores with the sampling
    top-k filter and the temperature applied (temperature 0 reports temperature 1), before top-p."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, log-probability), most likely first


@dataclass(frozen=True)
class StreamEvent:
    """One step of a streamed generation for one request of the batch."""

    index: int
    token_id: int
    text: str
    """Newly printable text (may be empty while a multi-byte character is incomplete)."""
    finish_reason: FinishReason | None = None
    logprob: float | None = None
    """Log-probability of ``token_id`` under the distribution it was drawn from (see ``TokenLogprob``)."""
    contributions: Mapping[str, float] = field(default_factory=dict)
    """How much each steering objective raised (or lowered) this token's score: beta · w · z."""
    compute: Compute | None = None
    """On a request's last event only: what the whole request cost."""
    error: Exception | None = None
    """The request failed (a remote base model's error, say): its last event, nothing else set."""
    tokens: tuple[TokenLogprob, ...] = ()
    """The tokens this event adds, with their log-probabilities: the sampled token (not an end token), or
    for methods that answer at once, every token of the answer."""
