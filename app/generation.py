"""From an OpenAI-style request to a validated GenerationRequest.

Refuses OpenAI fields this server does not implement, resolves whose profile
applies (the ``user`` field: the caller's own unless the caller is an admin),
merges the per-request ``personalization`` override over that profile, checks
limits (the work cap of :mod:`app.budget` included), and tokenizes the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from app.budget import check_work
from app.errors import APIError, api_error_for, forbidden
from app.schemas import PersonalizationIn, _GenerationParams
from app.services import ModelRuntime, Services
from personalize.db.errors import NotFoundError
from personalize.db.records import ProfileRecord, UserRecord
from personalize.decoding.config import (
    AISPParams,
    GenerationRequest,
    IVGParams,
    Personalization,
    SamplingParams,
)
from personalize.decoding.rng import derive_seed
from personalize.errors import ConfigError, ContextLengthError, UnknownObjectiveError


@dataclass(frozen=True)
class PreparedRequest:
    request: GenerationRequest
    user_id: str
    model_id: str
    logprobs: bool = False
    """Whether each choice reports its tokens' log-probabilities."""

    @property
    def prompt_tokens(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def top_logprobs(self) -> int:
        return self.request.sampling.top_logprobs

    def choices(self, n: int) -> list[GenerationRequest]:
        """``n`` requests for ``n`` answers: the first with the request's seed, the others derived from it
        (random when no seed was given)."""
        seed = self.request.sampling.seed
        out = [self.request]
        for i in range(1, n):
            derived = derive_seed(seed, i) if seed is not None else None
            out.append(replace(self.request, sampling=replace(self.request.sampling, seed=derived)))
        return out


def _absent(value: Any) -> bool:
    return value is None


# OpenAI fields this server does not implement -> the values that ask for nothing (sent by some clients).
UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "tools": _absent,
    "tool_choice": lambda v: v is None or v == "none",
    "parallel_tool_calls": _absent,
    "functions": _absent,
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
    "audio": _absent,
    "modalities": lambda v: v is None or v == ["text"],
    "prediction": _absent,
    "web_search_options": _absent,
    "reasoning_effort": _absent,
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "store": lambda v: v is None or v is False,
    "suffix": _absent,
    "echo": lambda v: v is None or v is False,
    "best_of": lambda v: v is None or v == 1,
}


def refuse_unsupported(body: _GenerationParams) -> None:
    """422 naming the first OpenAI field in the body that asks for something this server does not do."""
    extra = body.model_extra or {}
    for name, harmless in UNSUPPORTED.items():
        if name in extra and not harmless(extra[name]):
            hint = " (Best-of-N is personalization.best_of with method 'bon')" if name == "best_of" else ""
            raise APIError(
                422,
                f"{name!r} is not supported by this server{hint}; leave it out. Unsupported here: "
                f"{', '.join(sorted(UNSUPPORTED))}",
                param=name,
                code="unsupported_parameter",
            )


def resolve_user(services: Services, caller: UserRecord, requested: str | None) -> UserRecord:
    """The user whose profile steers this request."""
    if not requested or requested in (caller.id, caller.name):
        return caller
    if not caller.is_admin:
        raise forbidden(
            f"'user' must be your own id ({caller.id}) or name; only admins may act for other users",
            "user",
        )
    try:
        return services.users.get(requested)
    except NotFoundError as exc:
        raise APIError(404, str(exc), type="not_found_error", param="user", code="user_not_found") from exc


class MethodParams(NamedTuple):
    ivg: IVGParams
    aisp: AISPParams


def _method_params(override: PersonalizationIn | None, method: str) -> MethodParams:
    """The request's ``ivg`` / ``aisp`` parameters (defaults where omitted), refused under another method."""
    ivg_in = override.ivg if override is not None else None
    aisp_in = override.aisp if override is not None else None
    for name, given in (("ivg", ivg_in), ("aisp", aisp_in)):
        if given is not None and method != name:
            raise APIError(
                422,
                f"personalization.{name} holds the parameters of method {name!r}, but this request's method is "
                f"{method!r}: set personalization.method to {name!r} or leave {name} out",
                param=f"personalization.{name}",
                code="invalid_value",
            )
    try:  # the schema checked each field's range; the library checks the limits across fields
        ivg = IVGParams(**ivg_in.model_dump()) if ivg_in is not None else IVGParams()
        aisp = AISPParams(**aisp_in.model_dump()) if aisp_in is not None else AISPParams()
    except ConfigError as exc:
        raise api_error_for(exc, f"personalization.{method}") from exc
    return MethodParams(ivg, aisp)


def merge_personalization(
    profile: ProfileRecord, override: PersonalizationIn | None, loaded: Collection[str]
) -> Personalization:
    """The profile with the request's override applied.

    Profile weights on objectives that are not loaded right now are skipped (a head
    may have been deactivated since the profile was saved); an override naming an
    unknown objective is an error.
    """
    weights = {k: w for k, w in profile.weights.items() if k in loaded}
    beta, method, top_k, best_of = profile.beta, profile.method, profile.top_k, 4
    if override is not None:
        if override.weights is not None:
            for name in override.weights:
                if name not in loaded:
                    raise api_error_for(UnknownObjectiveError(name, loaded), f"personalization.weights.{name}")
            weights = dict(override.weights)
        beta = override.beta if override.beta is not None else beta
        method = override.method if override.method is not None else method
        top_k = override.top_k if override.top_k is not None else top_k
        best_of = override.best_of if override.best_of is not None else best_of
    ivg, aisp = _method_params(override, method)
    try:
        merged = Personalization(
            weights=weights,
            beta=beta,
            method=method,
            top_k=top_k,
            best_of=best_of,
            ivg=ivg,
            aisp=aisp,
            within_top_k=override.within_top_k if override is not None else False,
            chunk_tokens=override.chunk_tokens if override is not None else None,
        )
    except ConfigError as exc:
        raise api_error_for(exc, "personalization") from exc
    if merged.method == "bon" and not merged.active_weights:
        raise APIError(
            422,
            "method 'bon' ranks samples by the weighted objectives' rewards: give non-zero weights",
            param="personalization.weights",
            code="invalid_value",
        )
    return merged


def check_model(runtime: ModelRuntime, model: str) -> None:
    if model not in ("default", runtime.model_id):
        raise APIError(
            404,
            f"model {model!r} does not exist; available: 'default', {runtime.model_id!r}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )


def sampling_params(services: Services, body: _GenerationParams, max_tokens: int | None) -> SamplingParams:
    limit = services.settings.max_tokens_limit
    wanted = max_tokens if max_tokens is not None else min(services.settings.default_max_tokens, limit)
    if wanted > limit:
        raise APIError(
            422,
            f"max_tokens is {wanted}; this server allows at most {limit}",
            param="max_tokens",
            code="invalid_value",
        )
    stop: tuple[str, ...] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    _, top_logprobs = logprob_request(body)
    try:
        return SamplingParams(
            max_new_tokens=wanted,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=stop,
            seed=body.seed,
            top_logprobs=top_logprobs,
            logit_bias=logit_bias(body),
        )
    except ConfigError as exc:
        raise api_error_for(exc) from exc


def logprob_request(body: _GenerationParams) -> tuple[bool, int]:
    """(report log-probabilities?, alternatives per position): chat's ``logprobs``/``top_logprobs``,
    text completions' ``logprobs`` (an integer: the alternatives)."""
    wanted = getattr(body, "logprobs", None)
    top = getattr(body, "top_logprobs", None)
    if isinstance(wanted, bool):  # chat completions
        if top is not None and not wanted:
            raise APIError(422, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        return wanted, int(top or 0)
    return wanted is not None, int(wanted or 0)


def logit_bias(body: _GenerationParams) -> dict[int, float]:
    """``logit_bias``'s keys (token ids written as strings, as OpenAI takes them) as integers."""
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.strip().isdigit():
            raise APIError(
                422,
                f"logit_bias keys are token ids (digits), got {key!r}",
                param=f"logit_bias.{key}",
                code="invalid_value",
            )
        bias[int(key)] = value
    return bias


def prepare(
    services: Services,
    runtime: ModelRuntime,
    caller: UserRecord,
    body: _GenerationParams,
    *,
    prompt_ids: Sequence[int],
    max_tokens: int | None,
    prompt_param: str,
) -> PreparedRequest:
    """Everything but decoding; runs on a worker thread (database, tokenizer)."""
    refuse_unsupported(body)
    check_model(runtime, body.model)
    sampling = sampling_params(services, body, max_tokens)
    target = resolve_user(services, caller, body.user)
    profile = services.profiles.get(target.id)
    personalization = merge_personalization(profile, body.personalization, runtime.engine.objectives)
    if not prompt_ids:
        raise APIError(422, f"{prompt_param} is empty", param=prompt_param, code="invalid_value")
    request = GenerationRequest(tuple(prompt_ids), sampling, personalization)
    settings = services.settings
    widest = min(settings.max_request_rows or settings.max_batch_rows, settings.max_batch_rows)
    check_work(request, runtime.engine, settings.max_request_work, copies=body.n, max_rows=widest)
    try:
        runtime.engine.validate(request)
    except ContextLengthError as exc:
        raise api_error_for(exc, prompt_param) from exc
    except UnknownObjectiveError as exc:
        raise api_error_for(exc, f"personalization.weights.{exc.name}") from exc
    except ConfigError as exc:
        field = "logit_bias" if "logit_bias" in str(exc) else None
        raise api_error_for(exc, field) from exc
    return PreparedRequest(request, target.id, runtime.model_id, logprob_request(body)[0])
