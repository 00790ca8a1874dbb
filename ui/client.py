"""A typed client for the personalize HTTP API: the UI's only way to the service.

Errors (every non-2xx answer, and an error sent inside a stream)::

    ApiError              status, message, code and param from the OpenAI-style error body
    ├── ConflictError     409 on a profile write: someone saved a newer version since it was read
    └── ConnectionFailed  the service did not answer at all (not running, wrong URL)

``transport`` is the seam for tests: any ``httpx.BaseTransport`` (e.g. ``httpx.MockTransport``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

KNOWN_METHODS: tuple[str, ...] = ("base", "vas", "bon")
"""What a server that does not publish its methods in /openapi.json is assumed to accept."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def __str__(self) -> str:
        where = f" ({self.param})" if self.param else ""
        return f"{self.message}{where} [HTTP {self.status}]" if self.status else self.message


class ConflictError(ApiError):
    pass


class ConnectionFailed(ApiError):
    pass


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class HeadVersion:
    version: str
    active: bool
    kind: str
    size_bytes: int
    created_at: str


@dataclass(frozen=True)
class Objective:
    name: str
    description: str
    version: str | None
    """The active version (None: the objective is deactivated)."""
    active: bool
    loaded: bool
    kind: str | None
    versions: tuple[HeadVersion, ...]


@dataclass(frozen=True)
class Profile:
    user_id: str
    weights: Mapping[str, float]
    beta: float
    method: str
    top_k: int
    version: int


@dataclass(frozen=True)
class IVGSettings:
    """``personalization.ivg`` spelled out, for Python callers (a plain mapping of the API's fields works too)."""

    candidates: int
    chunk_tokens: int
    beams: int
    implicit_weight: float


@dataclass(frozen=True)
class AISPSettings:
    """``personalization.aisp`` spelled out, for Python callers (a plain mapping of the API's fields works too)."""

    sigma: float
    lam: float
    samples: int
    iterations: int


MethodValues = Mapping[str, float] | IVGSettings | AISPSettings


def _values(params: MethodValues) -> dict[str, Any]:
    return dict(params) if isinstance(params, Mapping) else asdict(params)


@dataclass(frozen=True)
class GenerationSettings:
    """What one request asks for; ``explain`` asks for per-token contributions. ``best_of``, ``ivg`` and
    ``aisp`` are sent only with their own method, and only when given (else the API's defaults apply)."""

    weights: Mapping[str, float] = field(default_factory=dict)
    beta: float = 1.0
    method: str = "vas"
    max_tokens: int = 128
    seed: int | None = 0
    temperature: float = 0.7
    best_of: int | None = None
    ivg: MethodValues | None = None
    aisp: MethodValues | None = None
    explain: bool = False

    def personalization(self) -> dict[str, Any]:
        body: dict[str, Any] = {"weights": dict(self.weights), "beta": self.beta, "method": self.method}
        if self.method == "bon" and self.best_of is not None:
            body["best_of"] = self.best_of
        if self.method == "ivg" and self.ivg is not None:
            body["ivg"] = _values(self.ivg)
        if self.method == "aisp" and self.aisp is not None:
            body["aisp"] = _values(self.aisp)
        if self.explain:
            body["explain"] = True
        return body


@dataclass(frozen=True)
class MethodParam:
    """One of a method's parameters as the API's OpenAPI document describes it: what a form needs."""

    method: str
    name: str
    """The field's name in the request (``best_of``, or a field of ``personalization.<method>``)."""
    title: str
    description: str
    is_int: bool
    low: float
    high: float
    default: float

    @property
    def key(self) -> str:
        """A widget key unique across methods: ``best_of``, ``ivg_candidates``, ``aisp_sigma``, ..."""
        return self.name if self.method == "bon" else f"{self.method}_{self.name}"


Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class RewardScores:
    """``POST /v1/rewards/score``: objective -> one score per response, and each reward's range."""

    scores: Mapping[str, tuple[float, ...]]
    ranges: Mapping[str, Bounds]

    def of(self, index: int) -> dict[str, float]:
        """Objective -> score of response ``index``."""
        return {name: values[index] for name, values in self.scores.items()}


@dataclass(frozen=True)
class TokenPush:
    """One generated token and each objective's push on its score (``personalization.explain``)."""

    text: str
    token_id: int
    contributions: Mapping[str, float]


@dataclass(frozen=True)
class Delta:
    """One streamed chunk of an answer."""

    text: str = ""
    tokens: tuple[TokenPush, ...] = ()
    finish_reason: str | None = None
    completion_tokens: int | None = None
    personalization: Mapping[str, Any] | None = None
    compute: Mapping[str, Any] | None = None
    """``compute`` of the answer (forwards, flops, samples, ...), on the chunk that finishes it."""


@dataclass(frozen=True)
class DuelAnswer:
    text: str
    personalization: Mapping[str, Any]
    """What the answer was generated with; sent back with the choice."""


@dataclass(frozen=True)
class Duel:
    """``POST /v1/users/{id}/duel``: two answers to compare."""

    prompt: str
    left: DuelAnswer
    right: DuelAnswer
    direction: Mapping[str, float]
    candidates: int = 0
    """Answers the duel generated."""
    kept: int = 0
    """Answers of the user's earlier duels on the prompt the pair was also chosen from."""


@dataclass(frozen=True)
class FeedbackFit:
    """What one choice taught: the refitted utility and the profile weights it gave."""

    comparisons: int
    utility: Mapping[str, float]
    stderr: Mapping[str, float]
    weights: Mapping[str, float]
    ignored: tuple[str, ...]


def _duel(data: Mapping[str, Any]) -> Duel:
    left, right = (DuelAnswer(str(a["text"]), dict(a["personalization"])) for a in data["answers"][:2])
    direction = {str(k): float(v) for k, v in data["direction"].items()}
    counts = int(data.get("candidates", 0)), int(data.get("kept", 0))
    return Duel(str(data["prompt"]), left, right, direction, *counts)


def _fit(data: Mapping[str, Any]) -> FeedbackFit:
    def floats(values: Mapping[str, Any]) -> dict[str, float]:
        return {str(k): float(v) for k, v in values.items()}

    return FeedbackFit(
        comparisons=int(data["comparisons"]),
        utility=floats(data["utility"]),
        stderr=floats(data["stderr"]),
        weights=floats(data["weights"]),
        ignored=tuple(str(x) for x in data.get("ignored", ())),
    )


def _error_from(response: httpx.Response) -> ApiError:
    try:
        detail = response.json().get("error") or {}
    except (ValueError, AttributeError):
        detail = {}
    message = str(detail.get("message") or response.text or response.reason_phrase)
    kind = ConflictError if response.status_code == 409 else ApiError
    return kind(response.status_code, message, code=detail.get("code"), param=detail.get("param"))


def _objective(data: Mapping[str, Any]) -> Objective:
    return Objective(
        name=str(data["name"]),
        description=str(data.get("description") or ""),
        version=data.get("version"),
        active=bool(data.get("active")),
        loaded=bool(data.get("loaded")),
        kind=data.get("kind"),
        versions=tuple(
            HeadVersion(
                version=str(v["version"]),
                active=bool(v["active"]),
                kind=str(v.get("kind") or ""),
                size_bytes=int(v.get("size_bytes") or 0),
                created_at=str(v.get("created_at") or ""),
            )
            for v in data.get("versions", ())
        ),
    )


def _profile(data: Mapping[str, Any]) -> Profile:
    return Profile(
        user_id=str(data["user_id"]),
        weights={str(k): float(v) for k, v in data["weights"].items()},
        beta=float(data["beta"]),
        method=str(data["method"]),
        top_k=int(data["top_k"]),
        version=int(data["version"]),
    )


def _delta(chunk: Mapping[str, Any]) -> Delta:
    usage = chunk.get("usage") or {}
    choices = chunk.get("choices") or [{}]
    choice = choices[0]
    tokens = tuple(
        TokenPush(str(t["text"]), int(t["token_id"]), {str(k): float(v) for k, v in t["contributions"].items()})
        for t in choice.get("token_contributions") or ()
    )
    return Delta(
        text=str((choice.get("delta") or {}).get("content") or ""),
        tokens=tokens,
        finish_reason=choice.get("finish_reason"),
        completion_tokens=usage.get("completion_tokens"),
        personalization=chunk.get("personalization"),
        compute=chunk.get("compute"),
    )


def _reward_scores(data: Mapping[str, Any]) -> RewardScores:
    ranges: dict[str, Bounds] = {}
    for name, (low, high) in data["ranges"].items():
        ranges[str(name)] = (None if low is None else float(low), None if high is None else float(high))
    scores = {str(name): tuple(float(v) for v in values) for name, values in data["objectives"].items()}
    return RewardScores(scores, ranges)


def methods_from_openapi(schema: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``personalization.method`` values an API's OpenAPI document accepts."""
    try:
        prop = schema["components"]["schemas"]["PersonalizationIn"]["properties"]["method"]
    except (KeyError, TypeError):
        return KNOWN_METHODS
    found: list[str] = []
    for option in [prop, *prop.get("anyOf", ())]:
        found.extend(str(v) for v in option.get("enum", ()) if str(v) not in found)
        if "const" in option and str(option["const"]) not in found:
            found.append(str(option["const"]))
    return tuple(found) or KNOWN_METHODS


def _param(method: str, name: str, prop: Mapping[str, Any]) -> MethodParam | None:
    """A number field of the schema (``prop`` itself, or its non-null ``anyOf`` branch) as a MethodParam."""
    branch = next((o for o in [prop, *prop.get("anyOf", ())] if o.get("type") in ("integer", "number")), None)
    if branch is None or "minimum" not in branch or "maximum" not in branch:
        return None
    default = branch.get("default", prop.get("default"))
    return MethodParam(
        method=method,
        name=name,
        title=str(prop.get("title") or name.replace("_", " ").capitalize()),
        description=str(branch.get("description") or prop.get("description") or ""),
        is_int=branch["type"] == "integer",
        low=float(branch["minimum"]),
        high=float(branch["maximum"]),
        default=float(branch["minimum"] if default is None else default),
    )


def method_params_from_openapi(schema: Mapping[str, Any]) -> dict[str, tuple[MethodParam, ...]]:
    """Method -> its parameters, read from ``PersonalizationIn``: ``best_of`` for bon, and each property
    that refers to a parameter object (``ivg`` -> ``IVGIn``, ...) for its method."""
    try:
        schemas = schema["components"]["schemas"]
        properties = schemas["PersonalizationIn"]["properties"]
    except (KeyError, TypeError):
        return {}
    found: dict[str, tuple[MethodParam, ...]] = {}
    best_of = _param("bon", "best_of", properties.get("best_of") or {})
    if best_of is not None:
        found["bon"] = (best_of,)
    for method, prop in properties.items():
        ref = next((o["$ref"] for o in [prop, *prop.get("anyOf", ())] if "$ref" in o), None)
        target = schemas.get(str(ref).rsplit("/", 1)[-1], {}) if ref else {}
        params = [_param(method, name, p) for name, p in target.get("properties", {}).items()]
        if params and all(p is not None for p in params):
            found[method] = tuple(p for p in params if p is not None)
    return found


class ApiClient:
    """One signed-in caller (``api_key``) of the service at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 300.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # ---- plumbing ----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(0, f"cannot reach the service at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    # ---- users and profiles ------------------------------------------------------------
    def me(self) -> User:
        data = self._request("GET", "/v1/users/me")
        return User(str(data["id"]), str(data["name"]), str(data["role"]))

    def profile(self, user_id: str) -> Profile:
        return _profile(self._request("GET", f"/v1/users/{user_id}/profile"))

    def save_profile(self, user_id: str, settings: GenerationSettings, *, version: int | None) -> Profile:
        """Write the weights, beta and method; ``version`` is the one last read (409 if it is stale)."""
        body: dict[str, Any] = {"weights": dict(settings.weights), "beta": settings.beta, "method": settings.method}
        if version is not None:
            body["version"] = version
        return _profile(self._request("PUT", f"/v1/users/{user_id}/profile", json=body))

    # ---- pairwise feedback -------------------------------------------------------------
    def duel(self, user_id: str, prompt: str, *, max_tokens: int = 96, seed: int | None = None) -> Duel:
        """Two answers to ``prompt`` chosen to teach the most (counts as candidates x samples generations)."""
        body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = seed
        return _duel(self._request("POST", f"/v1/users/{user_id}/duel", json=body))

    def send_feedback(self, user_id: str, prompt: str, chosen: DuelAnswer, rejected: DuelAnswer) -> FeedbackFit:
        """Say ``chosen`` is the better answer; the profile's weights are refitted."""
        body = {
            "prompt": prompt,
            "chosen": chosen.text,
            "rejected": rejected.text,
            "chosen_personalization": dict(chosen.personalization),
            "rejected_personalization": dict(rejected.personalization),
        }
        return _fit(self._request("POST", f"/v1/users/{user_id}/feedback", json=body)["fit"])

    def feedback_count(self, user_id: str) -> int:
        return int(self._request("GET", f"/v1/users/{user_id}/feedback", params={"limit": 1})["total"])

    def forget_feedback(self, user_id: str) -> Profile:
        """Delete every choice; a fitted profile goes back to its last manual weights."""
        return _profile(self._request("DELETE", f"/v1/users/{user_id}/feedback")["profile"])

    # ---- objectives --------------------------------------------------------------------
    def objectives(self) -> list[Objective]:
        return [_objective(o) for o in self._request("GET", "/v1/objectives")["data"]]

    def openapi(self) -> Mapping[str, Any]:
        """The service's OpenAPI document (empty if it publishes none)."""
        try:
            document: Mapping[str, Any] = self._request("GET", "/openapi.json")
        except ApiError:
            return {}
        return document

    def methods(self) -> tuple[str, ...]:
        return methods_from_openapi(self.openapi())

    def upload_head(self, files: Sequence[tuple[str, bytes]], *, activate: bool = True) -> Objective:
        parts = [("files", (name, content)) for name, content in files]
        data = {"activate": "true" if activate else "false"}
        return _objective(self._request("POST", "/v1/objectives", files=parts, data=data))

    def set_active(self, name: str, active: bool, version: str | None = None) -> Objective:
        body: dict[str, Any] = {"active": active}
        if active and version is not None:
            body["version"] = version
        return _objective(self._request("PATCH", f"/v1/objectives/{name}", json=body))

    # ---- rewards -----------------------------------------------------------------------
    def score_rewards(
        self, prompt: str, responses: Sequence[str], objectives: Sequence[str] | None = None
    ) -> RewardScores:
        """Each response's score under each objective's reward (all active objectives by default)."""
        body: dict[str, Any] = {"prompt": prompt, "responses": list(responses)}
        if objectives is not None:
            body["objectives"] = list(objectives)
        return _reward_scores(self._request("POST", "/v1/rewards/score", json=body))

    # ---- generation --------------------------------------------------------------------
    def stream_chat(self, prompt: str, settings: GenerationSettings) -> Iterator[Delta]:
        """Stream one chat answer to ``prompt`` (server-sent events), chunk by chunk."""
        body = {
            "model": "default",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
            "personalization": settings.personalization(),
        }
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = chunk["error"]
                        raise ApiError(200, str(error.get("message")), code=error.get("code"))
                    yield _delta(chunk)
        except httpx.TransportError as exc:
            raise ConnectionFailed(0, f"cannot reach the service at {self.base_url}: {exc}") from exc
