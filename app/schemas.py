"""Request and response bodies (OpenAI wire format plus the personalization extension).

Bounds come from :mod:`personalize.decoding.config`, so a bad value is refused
here with the exact field named, before anything is queued. The methods' parameter
objects (``ivg``, ``aisp``) and ``best_of`` are built from
:mod:`personalize.method_params`, i.e. from the library's dataclasses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model
from pydantic_core import PydanticCustomError

from personalize.decoding.config import (
    BETA_RANGE,
    CHUNK_TOKENS_RANGE,
    LOGIT_BIAS_MAX,
    LOGIT_BIAS_RANGE,
    METHODS,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    WEIGHT_RANGE,
)
from personalize.method_params import ParamSpec, method_params


def _whole_number(value: Any) -> Any:
    """``30.0`` is the integer 30 (as in JSON Schema and the OpenAI API); ``30.5``, ``"30"`` or ``true`` are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE = BeforeValidator(_whole_number)
"""On strict integer fields: accept integral floats, still refuse strings and booleans."""

ObjectiveName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Weight = Annotated[float, Field(ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1], allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=BETA_RANGE[0], le=BETA_RANGE[1], allow_inf_nan=False)]
TopK = Annotated[int, WHOLE, Field(ge=TOP_K_RANGE[0], le=TOP_K_RANGE[1], strict=True)]
Method = Literal[METHODS]  # type: ignore[valid-type]

_Number = TypeVar("_Number", int, float)


def _within(bounds: tuple[_Number, _Number]) -> AfterValidator:
    """Refuse a value outside ``bounds`` (NaN included) with a message that gives the whole range."""
    lo, hi = bounds
    kind = "an integer" if isinstance(lo, int) else "a number"

    def check(value: _Number) -> _Number:
        if not lo <= value <= hi:
            raise PydanticCustomError(
                "out_of_range", "must be {kind} in [{lo}, {hi}]", {"kind": kind, "lo": lo, "hi": hi}
            )
        return value

    return AfterValidator(check)


def _bounds(bounds: tuple[float, float]) -> dict[str, Any]:
    """The range in the OpenAPI schema (the check itself is :func:`_within`)."""
    return {"minimum": bounds[0], "maximum": bounds[1]}


def _field(spec: ParamSpec) -> tuple[Any, Any]:
    """A method parameter as a pydantic field: its type, range (checked, and shown in the schema) and default."""
    shown = Field(json_schema_extra=_bounds(spec.bounds), strict=True if spec.kind is int else None)
    annotation: Any
    if spec.kind is int:  # 30.0 is 30; "30" and true are refused
        annotation = Annotated[int, WHOLE, shown, _within(spec.bounds)]
    else:
        annotation = Annotated[spec.kind, shown, _within(spec.bounds)]  # type: ignore[name-defined]
    return annotation, Field(default=spec.default, description=spec.description)


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _params_model(name: str, method: str, doc: str) -> type[BaseModel]:
    """The request schema of ``method``'s parameters, one field per field of its library dataclass."""
    fields: dict[str, Any] = {spec.name: _field(spec) for spec in method_params(method)}
    return create_model(name, __base__=_Params, __doc__=doc, **fields)


IVGIn = _params_model(
    "IVGIn",
    "ivg",
    """Parameters of ``method: "ivg"`` (Integrated Value Guidance); omitted fields take the defaults shown.
    Only with method ``ivg`` (given in the request or by the profile).""",
)
AISPIn = _params_model(
    "AISPIn",
    "aisp",
    """Parameters of ``method: "aisp"`` (adaptive importance sampling on pre-logits); omitted fields take the
    defaults shown. Only with method ``aisp`` (given in the request or by the profile).""",
)
_BEST_OF, *_ = method_params("bon")
BestOf = Annotated[
    int,
    WHOLE,
    Field(
        strict=True,
        description=_BEST_OF.description,
        json_schema_extra={**_bounds(_BEST_OF.bounds), "default": _BEST_OF.default},  # what an omitted best_of is
    ),
    _within(_BEST_OF.bounds),
]


class PersonalizationIn(BaseModel):
    """Per-request override of the caller's profile; omitted fields come from the profile."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[ObjectiveName, Weight] | None = None
    beta: Beta | None = None
    method: Method | None = None
    top_k: TopK | None = None
    best_of: BestOf | None = None
    explain: bool = Field(
        default=False,
        description=(
            "Return per-token contributions: each choice (each streamed chunk, or the whole message) "
            "carries `token_contributions`, one entry per generated token saying how much each steering "
            "objective raised or lowered that token's score. Not a profile field: applies to this request only."
        ),
    )
    ivg: IVGIn | None = Field(  # type: ignore[valid-type]
        default=None, description="Parameters of method 'ivg' (only with that method); omitted: the defaults."
    )
    aisp: AISPIn | None = Field(  # type: ignore[valid-type]
        default=None, description="Parameters of method 'aisp' (only with that method); omitted: the defaults."
    )
    within_top_k: bool = Field(
        default=False,
        description="Sample only among the base model's `top_k` candidates (the support a remote base model "
        "offers); by default every other token keeps its base probability. Not a profile field.",
    )
    chunk_tokens: int | None = Field(
        default=None,
        ge=CHUNK_TOKENS_RANGE[0],
        le=CHUNK_TOKENS_RANGE[1],
        description="Remote base model only: tokens the upstream proposes per call (speculative chunk length L); "
        "omitted: chosen per sequence from the observed acceptance (docs: Remote base models). 1 is per-token "
        "remote VAS. Not a profile field.",
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 256
MAX_MESSAGE_CHARS = 65_536
MAX_PROMPT_CHARS = 65_536
MAX_USER_CHARS = 256
MAX_CONTENT_PARTS = 64
MAX_CHOICES = 8


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    strings = [value] if isinstance(value, str) else list(value or ())
    if len(strings) > MAX_STOP_STRINGS:
        raise PydanticCustomError(
            "too_many_stop", "at most {max} stop strings, got {n}", {"max": MAX_STOP_STRINGS, "n": len(strings)}
        )
    for text in strings:
        if not 1 <= len(text) <= MAX_STOP_CHARS:
            raise PydanticCustomError(
                "stop_length",
                "each stop string must have 1 to {max} characters, got one of {n}",
                {"max": MAX_STOP_CHARS, "n": len(text)},
            )
    return value


def _at_most_chars(limit: int) -> AfterValidator:
    """Refuse text (a string, or the text parts of a message) longer than ``limit`` characters."""

    def check(value: Any) -> Any:
        n = len(value) if isinstance(value, str) else sum(len(getattr(p, "text", p)) for p in value)
        if n > limit:
            raise PydanticCustomError("too_long", "at most {max} characters, got {n}", {"max": limit, "n": n})
        return value

    return AfterValidator(check)


StopField = Annotated[
    str | list[str] | None,
    Field(
        description=f"Up to {MAX_STOP_STRINGS} strings of 1 to {MAX_STOP_CHARS} characters where the answer ends.",
        json_schema_extra={"maxItems": MAX_STOP_STRINGS},
    ),
    AfterValidator(_check_stop),
]


class _GenerationParams(BaseModel):
    """Fields shared by chat and text completions.

    OpenAI fields this server does not implement (``tools``, ``tool_choice``, ``response_format``,
    ``functions``, ``audio``, ...) are refused with 422 naming them; other unknown fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = "default"
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1], allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    n: Annotated[int, WHOLE, Field(ge=1, le=MAX_CHOICES, strict=True)] = Field(
        default=1,
        description=f"Answers to generate (at most {MAX_CHOICES}); they decode together in the running batch, "
        "seeded from `seed` (choice i > 0 with a seed derived from it), and count n times against the work cap.",
    )
    logit_bias: dict[str, Annotated[float, Field(ge=LOGIT_BIAS_RANGE[0], le=LOGIT_BIAS_RANGE[1])]] | None = Field(
        default=None,
        max_length=LOGIT_BIAS_MAX,
        description="Token id (as a string) -> bias in [-100, 100], added to the base model's logits before the "
        "top-k and the value guidance, as OpenAI adds it to logits. Not with a remote base model.",
    )
    stop: StopField = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, StringConstraints(max_length=MAX_USER_CHARS)] | None = Field(
        default=None, description=f"Whose profile steers the request (id or name, at most {MAX_USER_CHARS} chars)."
    )
    personalization: PersonalizationIn | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[
        str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)],
        Field(description=f"At most {MAX_MESSAGE_CHARS} characters."),
        _at_most_chars(MAX_MESSAGE_CHARS),
    ]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = Field(
        default=False,
        description="Return each token's log-probability under the distribution it was drawn from (see the "
        "API docs: per method).",
    )
    top_logprobs: Annotated[int, WHOLE, Field(ge=0, le=20, strict=True)] | None = Field(
        default=None, description="With `logprobs`: the most likely alternatives at each position (0-20)."
    )


class CompletionRequest(_GenerationParams):
    logprobs: Annotated[int, WHOLE, Field(ge=0, le=20, strict=True)] | None = Field(
        default=None,
        description="Return each token's log-probability and this many most likely alternatives (0-20).",
    )
    prompt: Annotated[
        str | Annotated[list[str], Field(min_length=1, max_length=1)],
        Field(description=f"At most {MAX_PROMPT_CHARS} characters."),
        _at_most_chars(MAX_PROMPT_CHARS),
    ]


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[ObjectiveName, Weight] = Field(default_factory=dict)
    beta: Beta = 1.0
    method: Method = "vas"
    top_k: TopK = 20
    version: Annotated[int, Field(ge=0)] | None = None
    """The version this write is based on (or send it as ``If-Match``)."""


class ProfileOut(BaseModel):
    user_id: str
    weights: dict[str, float]
    beta: float
    method: str
    top_k: int
    version: int
    updated_at: str
    source: Literal["manual", "feedback"] = Field(
        default="manual",
        description="Where the weights came from: `manual` (written here) or `feedback` (fitted from the "
        "user's choices, POST /v1/users/{id}/feedback). A manual write overrides a fitted profile.",
    )


MAX_KEY_LIFETIME_S = 10 * 365 * 24 * 3600
KeyLifetime = Annotated[int, Field(ge=1, le=MAX_KEY_LIFETIME_S)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")]
    role: Literal["user", "admin"] = "user"
    expires_in_seconds: KeyLifetime | None = Field(
        default=None, description="The API key stops working this many seconds from now (omitted: never)."
    )


class UserOut(BaseModel):
    id: str
    name: str
    role: str
    key_prefix: str
    created_at: str


class UserCreated(UserOut):
    api_key: str
    """Shown only in this response; only its hash is stored."""


class ObjectivePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    active: bool
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    """With ``active: true``: the version to activate (default: the newest)."""


class TokenContribution(BaseModel):
    """One generated token and each steering objective's push on it (``personalization.explain``)."""

    text: str = Field(
        description="The text this token added to the answer; empty while a multi-byte character or a "
        "possible stop string is held back, and for the end-of-sequence token. Concatenated, the entries' "
        "texts are the answer."
    )
    token_id: int
    contributions: dict[str, float] = Field(
        description="Objective name -> beta * weight * z: how much that objective added to (or, negative, "
        "took from) this token's score, in logit units. Empty when nothing steered the token (method "
        "'base', zero weights); 'bon' answers come as one entry for the whole text with no contributions."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: str | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: None = None


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = Field(default=None, description="Only with `logprobs: true`.")
    finish_reason: Literal["stop", "length"] | None
    token_contributions: list[TokenContribution] | None = Field(
        default=None, description="Only with `personalization.explain: true`."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ComputeOut(BaseModel):
    """What producing this response cost, summed over every sequence the request decoded (kept,
    discarded or superseded)."""

    forwards: int = Field(
        description="Batched model forwards the request took part in: its sequential depth, prefills included."
    )
    forward_rows: int = Field(
        description="Batch-row forwards: each of its sequences' rows (base + one per LoRA head) x the forwards "
        "it took part in; a prompt prefill shared by the request's sequences counts once."
    )
    processed_tokens: int = Field(
        description="Tokens pushed through the backbone: rows x tokens prefilled or generated."
    )
    flops: float = Field(
        description="Estimated FLOPs for this response: 2 x backbone parameters x processed_tokens (value "
        "outputs, pre-logit perturbations and reward functions not counted)."
    )
    samples: int = Field(
        description="Sequences sampled: 1 (base, vas), N (bon), candidate chunks (ivg), samples x iterations (aisp)."
    )
    upstream_calls: int = Field(
        default=0, description="Remote base model: requests sent to the upstream engine (0 when it runs here)."
    )
    upstream_tokens: int = Field(
        default=0, description="Remote: tokens the upstream proposed in speculative chunks (rejected ones included)."
    )
    accepted_tokens: int = Field(default=0, description="Remote: proposed tokens accepted as they were.")


COMPUTE_DOC = (
    "What the response cost (forwards, estimated FLOPs, samples). Streamed: on the chunk that carries the "
    "`finish_reason`, and on the `usage` chunk when `stream_options.include_usage` is set."
)
PERSONALIZATION_DOC = (
    "What was applied: weights, beta, method, top_k, best_of, head_versions, user; with method 'ivg' or "
    "'aisp' also that method's parameters (`ivg` / `aisp`, every field, defaults filled in)."
)


class ChatCompletionResponse(BaseModel):
    """A chat completion. With ``"stream": true`` the body is ``text/event-stream`` instead: ``data:`` lines
    holding ``chat.completion.chunk`` objects whose choice has a ``delta`` (and, with
    ``personalization.explain``, the ``token_contributions`` of that chunk's tokens), then ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    compute: ComputeOut = Field(description=COMPUTE_DOC)
    personalization: dict[str, Any] = Field(description=PERSONALIZATION_DOC)


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: TextLogprobs | None = Field(default=None, description="Only with `logprobs` set.")
    finish_reason: Literal["stop", "length"] | None
    token_contributions: list[TokenContribution] | None = Field(
        default=None, description="Only with `personalization.explain: true`."
    )


class CompletionResponse(BaseModel):
    """A text completion (``"stream": true``: ``text_completion`` chunks as server-sent events)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage
    compute: ComputeOut = Field(description=COMPUTE_DOC)
    personalization: dict[str, Any] = Field(description=PERSONALIZATION_DOC)


MAX_SCORED_RESPONSES = 16
MAX_SCORED_CHARS = 16_000
ScoredText = Annotated[str, StringConstraints(max_length=MAX_SCORED_CHARS)]


class RewardScoreRequest(BaseModel):
    """Responses to one prompt, to be scored by the reward functions of some objectives."""

    model_config = ConfigDict(extra="forbid")

    prompt: ScoredText = Field(description=f"The prompt the responses answer (at most {MAX_SCORED_CHARS} characters).")
    responses: Annotated[list[ScoredText], Field(min_length=1, max_length=MAX_SCORED_RESPONSES)] = Field(
        description=f"1 to {MAX_SCORED_RESPONSES} responses, each at most {MAX_SCORED_CHARS} characters."
    )
    objectives: Annotated[list[ObjectiveName], Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="Objectives with an active head (see GET /v1/objectives); omitted: all of them."
    )


class RewardScoreResponse(BaseModel):
    object: Literal["reward_scores"]
    objectives: dict[str, list[float]] = Field(
        description="Objective -> one score per response, in the order the responses were sent."
    )
    ranges: dict[str, Annotated[list[float | None], Field(min_length=2, max_length=2)]] = Field(
        description="Objective -> [low, high] of its reward function's scores; null where unbounded."
    )
    rewards: dict[str, str] = Field(
        description="Objective -> the reward function that scored it: its active head's `reward`, else the "
        "objective's own name."
    )
    head_versions: dict[str, str] = Field(description="Objective -> the active head version whose reward was used.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


JSONDict = dict[str, Any]
