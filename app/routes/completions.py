"""POST /v1/chat/completions and /v1/completions (OpenAI wire format, SSE streaming).

Each request holds one of its key's in-flight slots (:mod:`app.inflight`) until
its response is complete, and has a server-side deadline (``request_timeout_s``,
queueing included). When the deadline passes the request stops decoding at once;
a plain request gets 504 (``code: "timeout"``); a stream that already started
gets an error event with that body, then ``data: [DONE]``. While the server is
shutting down new requests get 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from app.deps import CurrentUser, RuntimeDep, ServicesDep
from app.errors import APIError, api_error_for, error_body, error_responses
from app.generation import PreparedRequest, prepare
from app.inflight import Lease
from app.scheduler import (
    DeadlineExceededError,
    DecoderDeadError,
    QueueFullError,
    RequestCancelledError,
    SchedulerStoppedError,
    Ticket,
)
from app.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    _GenerationParams,
)
from app.services import ModelRuntime, Services
from personalize.decoding import methods
from personalize.decoding.config import Compute, StreamEvent
from personalize.errors import PersonalizeError

router = APIRouter(prefix="/v1", tags=["completions"])

Kind = Literal["chat", "text"]
CONTRIBUTION_DIGITS = 4
STREAM_DOC = "The completion, or with `stream: true` a `text/event-stream` of chunks ending in `data: [DONE]`."
ERROR_RESPONSES = error_responses(400, 401, 403, 404, 413, 422, 429, 503, 504)
SHUTTING_DOWN_RETRY_S = "5"
SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event (with `stream: true`): its `data` is a JSON chunk, or an error object, "
    "and `[DONE]` last.",
    "properties": {"data": {"type": "string"}},
    "required": ["data"],
}
SSE_CONTENT: dict[str, Any] = {"content": {"text/event-stream": {"schema": SSE_EVENT}}}


def _explained(event: StreamEvent) -> dict[str, Any]:
    """One ``token_contributions`` entry (see :class:`app.schemas.TokenContribution`)."""
    pushes = {name: round(value, CONTRIBUTION_DIGITS) for name, value in event.contributions.items()}
    return {"text": event.text, "token_id": event.token_id, "contributions": pushes}


def _wants_explain(body: _GenerationParams) -> bool:
    return bool(body.personalization is not None and body.personalization.explain)


@dataclass
class _Output:
    """What one request produced so far, and its token count for ``usage``."""

    prepared: PreparedRequest
    runtime: ModelRuntime
    explain: bool = False
    parts: list[str] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    compute: Compute | None = None
    """What the request cost; its last event brings it."""

    def add(self, event: StreamEvent) -> None:
        self.parts.append(event.text)
        if event.compute is not None:
            self.compute = event.compute
        if self.explain:
            self.explained.append(_explained(event))
        eos = event.finish_reason == "stop" and event.token_id in self.runtime.base.eos_token_ids
        if not eos:
            self.tokens += 1
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            if not methods.streams(self.prepared.request):  # one event carries the whole text
                ids = self.runtime.base.tokenizer(self.text, add_special_tokens=False)["input_ids"]
                self.tokens = len(ids)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def usage(self) -> dict[str, int]:
        prompt = self.prepared.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": self.tokens, "total_tokens": prompt + self.tokens}

    def compute_json(self) -> dict[str, Any] | None:
        """The ``compute`` object (see :class:`app.schemas.ComputeOut`)."""
        return asdict(self.compute) if self.compute is not None else None


def _personalization(prepared: PreparedRequest, ticket: Ticket) -> dict[str, Any]:
    return {
        **prepared.request.personalization.to_dict(),
        "head_versions": dict(ticket.head_versions),
        "user": prepared.user_id,
    }


def _submit(services: Services, runtime: ModelRuntime, prepared: PreparedRequest) -> Ticket:
    try:
        ticket = runtime.scheduler.submit(prepared.request)
    except QueueFullError as exc:
        services.metrics.rejected.labels("queue_full").inc()
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from exc
    except SchedulerStoppedError as exc:
        raise _stopped(exc) from exc
    return ticket


def _stopped(exc: BaseException) -> APIError:
    code = "decoder_unavailable" if isinstance(exc, DecoderDeadError) else "shutting_down"
    return APIError(503, str(exc), type="server_error", code=code, headers={"Retry-After": SHUTTING_DOWN_RETRY_S})


@dataclass
class _Guard:
    """What a request holds until its response is complete: its in-flight slot and its deadline timer."""

    lease: Lease
    deadline: float | None
    """Event-loop time when the request must end (None: no deadline)."""
    timer: asyncio.TimerHandle | None = None

    def arm(self, ticket: Ticket) -> None:
        if self.deadline is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(self.deadline, ticket.expire)

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.lease.release()


async def _guarded(request: Request, services: Services) -> _Guard:
    """Admit a request: refused while draining, or over its key's in-flight limit."""
    if services.draining:
        raise _stopped(SchedulerStoppedError("the server is shutting down"))
    lease = services.in_flight.acquire(request.state.key_id)
    timeout = services.settings.request_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout if timeout > 0 else None
    return _Guard(lease, deadline)


def _record(services: Services, output: _Output) -> None:
    services.metrics.tokens.labels("prompt").inc(output.prepared.prompt_tokens)
    services.metrics.tokens.labels("completion").inc(output.tokens)
    for objective in output.prepared.request.personalization.active_weights:
        services.metrics.objective_requests.labels(objective).inc()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _error_of(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PersonalizeError):
        return api_error_for(exc)
    if isinstance(exc, SchedulerStoppedError):
        return _stopped(exc)
    if isinstance(exc, DeadlineExceededError):
        return APIError(504, str(exc), type="server_error", code="timeout")
    return APIError(500, "decoding failed", type="server_error", code="internal_error")


def _choice(kind: Kind, text: str, finish: str | None, *, delta: bool, first: bool = False) -> dict[str, Any]:
    if kind == "text":
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if delta:
        content: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
    return {
        "index": 0,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": None,
        "finish_reason": finish,
    }


def _envelope(kind: Kind, completion_id: str, created: int, model: str, *, chunk: bool) -> dict[str, Any]:
    obj = {"chat": "chat.completion", "text": "text_completion"}[kind]
    if chunk and kind == "chat":
        obj = "chat.completion.chunk"
    return {"id": completion_id, "object": obj, "created": created, "model": model, "system_fingerprint": None}


async def _respond(
    request: Request,
    services: Services,
    runtime: ModelRuntime,
    prepared: PreparedRequest,
    *,
    kind: Kind,
    stream: bool,
    include_usage: bool,
    explain: bool,
    guard: _Guard,
) -> Response:
    ticket = _submit(services, runtime, prepared)
    guard.arm(ticket)
    completion_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    output = _Output(prepared, runtime, explain=explain)
    if stream:
        return StreamingResponse(
            _sse(request, services, ticket, output, kind, completion_id, created, include_usage, guard),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(guard.release),  # also when the stream never started
        )

    async def collect() -> None:
        async for event in ticket.iter_events():
            output.add(event)

    collector = asyncio.create_task(collect())
    disconnect = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collector, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        guard.release()
        disconnect.cancel()
        if not collector.done():
            ticket.cancel()
            collector.cancel()
    if not collector.done() or collector.cancelled():
        return Response(status_code=499)  # the client is gone; nobody reads this
    if (exc := collector.exception()) is not None:
        raise _error_of(exc)
    _record(services, output)
    body = _envelope(kind, completion_id, created, prepared.model_id, chunk=False)
    body["choices"] = [_choice(kind, output.text, output.finish_reason, delta=False)]
    if explain:
        body["choices"][0]["token_contributions"] = output.explained
    body["usage"] = output.usage()
    body["compute"] = output.compute_json()
    body["personalization"] = _personalization(prepared, ticket)
    return JSONResponse(body)


def _sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _sse(
    request: Request,
    services: Services,
    ticket: Ticket,
    output: _Output,
    kind: Kind,
    completion_id: str,
    created: int,
    include_usage: bool,
    guard: _Guard,
) -> AsyncIterator[str]:
    prepared = output.prepared

    def chunk(
        text: str, finish: str | None, *, first: bool = False, tokens: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        body = _envelope(kind, completion_id, created, prepared.model_id, chunk=True)
        body["choices"] = [_choice(kind, text, finish, delta=True, first=first)]
        if tokens is not None:
            body["choices"][0]["token_contributions"] = tokens
        if first or finish is not None:
            body["personalization"] = _personalization(prepared, ticket)
        if finish is not None:
            body["compute"] = output.compute_json()
        if include_usage:
            body["usage"] = None
        return body

    async def watch_disconnect() -> None:
        await _wait_for_disconnect(request)
        ticket.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    first = True
    try:
        async for event in ticket.iter_events():
            output.add(event)
            if first and kind == "chat":  # the role comes first, on its own
                yield _sse_data(chunk("", None, first=True))
                first = False
            # With explain, every token's entry rides on a chunk: its text's, else the finishing one,
            # else an empty-text chunk of its own (a held-back character or stop-string prefix).
            tokens = [output.explained[-1]] if output.explain else None
            if event.text or (tokens is not None and event.finish_reason is None):
                yield _sse_data(chunk(event.text, None, first=first, tokens=tokens))
                first = False
                tokens = None
            if event.finish_reason is not None:
                yield _sse_data(chunk("", event.finish_reason, tokens=tokens))
        _record(services, output)
        if include_usage:
            tail = _envelope(kind, completion_id, created, prepared.model_id, chunk=True)
            tail["choices"] = []
            tail["usage"] = output.usage()
            tail["compute"] = output.compute_json()
            yield _sse_data(tail)
    except RequestCancelledError:
        return  # the client is gone
    except Exception as exc:
        error = _error_of(exc)
        yield _sse_data(error_body(error.message, error.type, error.param, error.code))
    finally:
        guard.release()
        watcher.cancel()
        ticket.cancel()  # drops the request if the stream ended early (the client went away)
    yield "data: [DONE]\n\n"


async def _serve(
    request: Request,
    services: Services,
    runtime: ModelRuntime,
    body: _GenerationParams,
    kind: Kind,
    prepare_request: Callable[[], PreparedRequest],
) -> Response:
    """Admit, prepare (on a worker thread), queue and answer one request."""
    guard = await _guarded(request, services)
    try:
        prepared = await run_in_threadpool(prepare_request)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(
            request,
            services,
            runtime,
            prepared,
            kind=kind,
            stream=body.stream,
            include_usage=include_usage,
            explain=_wants_explain(body),
            guard=guard,
        )
    except BaseException:
        guard.release()
        raise


@router.post(
    "/chat/completions",
    response_model=None,
    responses={200: {"model": ChatCompletionResponse, "description": STREAM_DOC, **SSE_CONTENT}, **ERROR_RESPONSES},
)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    user: CurrentUser,
    services: ServicesDep,
    runtime: RuntimeDep,
) -> Response:
    def prepare_chat() -> PreparedRequest:
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
        return prepare(
            services,
            runtime,
            user,
            body,
            prompt_ids=runtime.base.encode_chat(messages),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            prompt_param="messages",
        )

    return await _serve(request, services, runtime, body, "chat", prepare_chat)


@router.post(
    "/completions",
    response_model=None,
    responses={200: {"model": CompletionResponse, "description": STREAM_DOC, **SSE_CONTENT}, **ERROR_RESPONSES},
)
async def completions(
    request: Request,
    body: CompletionRequest,
    user: CurrentUser,
    services: ServicesDep,
    runtime: RuntimeDep,
) -> Response:
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]

    def prepare_text() -> PreparedRequest:
        return prepare(
            services,
            runtime,
            user,
            body,
            prompt_ids=runtime.base.encode_text(prompt),
            max_tokens=body.max_tokens,
            prompt_param="prompt",
        )

    return await _serve(request, services, runtime, body, "text", prepare_text)
