"""Request and response bodies (OpenAI wire format plus the personalization extension).

Bounds come from :mod:`personalize.decoding.config`, so a bad value is refused
here with the exact field named, before anything is queued.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from personalize.decoding.config import (
    BEST_OF_RANGE,
    BETA_RANGE,
    METHODS,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    WEIGHT_RANGE,
)

ObjectiveName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
Weight = Annotated[float, Field(ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1], allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=BETA_RANGE[0], le=BETA_RANGE[1], allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=TOP_K_RANGE[0], le=TOP_K_RANGE[1], strict=True)]
Method = Literal[METHODS]  # type: ignore[valid-type]


class PersonalizationIn(BaseModel):
    """Per-request override of the caller's profile; omitted fields come from the profile."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[ObjectiveName, Weight] | None = None
    beta: Beta | None = None
    method: Method | None = None
    top_k: TopK | None = None
    best_of: Annotated[int, Field(ge=BEST_OF_RANGE[0], le=BEST_OF_RANGE[1], strict=True)] | None = None
    explain: bool = Field(
        default=False,
        description=(
            "Return per-token contributions: each choice (each streamed chunk, or the whole message) "
            "carries `token_contributions`, one entry per generated token saying how much each steering "
            "objective raised or lowered that token's score. Not a profile field: applies to this request only."
        ),
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationParams(BaseModel):
    """Fields shared by chat and text completions; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = "default"
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1], allow_inf_nan=False)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] = 1.0
    n: Annotated[int, Field(ge=1)] = 1
    stop: str | list[Annotated[str, StringConstraints(min_length=1)]] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    personalization: PersonalizationIn | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_GenerationParams):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]


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


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")]
    role: Literal["user", "admin"] = "user"


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


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None
    token_contributions: list[TokenContribution] | None = Field(
        default=None, description="Only with `personalization.explain: true`."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
    personalization: dict[str, Any] = Field(
        description="What was applied: weights, beta, method, top_k, best_of, head_versions, user."
    )


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
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
    personalization: dict[str, Any]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


JSONDict = dict[str, Any]
