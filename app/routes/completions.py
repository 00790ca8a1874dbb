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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from app.deps import CurrentUser, RuntimeDep, ServicesDep
from app.errors import APIError, api_error_for, error_body, error_responses
from app.generation import PreparedRequest, prepare
from app.inflight import Lease
from app.logprobs import chat_logprobs, text_logprobs
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
from personalize.decoding.config import Compute, StreamEvent, TokenLogprob
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
    """What one choice produced so far, and its token count for ``usage``."""

    prepared: PreparedRequest
    runtime: ModelRuntime
    index: int = 0
    explain: bool = False
    parts: list[str] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    compute: Compute | None = None
    """What the request cost; its last event brings it."""

    def add(self, event: StreamEvent) -> None:
        self.parts.append(event.text)
        self.logprobs.extend(event.tokens)
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

    def logprobs_json(self, kind: Kind, entries: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any] | None:
        """``choices[].logprobs`` for ``entries`` (None unless the request asked for log-probabilities)."""
        if not self.prepared.logprobs:
            return None
        tokenizer, top = self.runtime.base.tokenizer, self.prepared.top_logprobs
        if kind == "chat":
            return chat_logprobs(tokenizer, entries, top)
        return text_logprobs(tokenizer, entries, top, offset)


def _usage(outputs: Sequence[_Output]) -> dict[str, int]:
    """The prompt counted once, the completion tokens of every choice (as OpenAI counts ``n``)."""
    prompt = outputs[0].prepared.prompt_tokens
    completion = sum(o.tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _compute_json(outputs: Sequence[_Output]) -> dict[str, Any] | None:
    """The ``compute`` object (see :class:`app.schemas.ComputeOut`), summed over the choices."""
    costs = [o.compute for o in outputs if o.compute is not None]
    if not costs:
        return None
    total = {name: sum(getattr(c, name) for c in costs) for name in (f.name for f in fields(Compute))}
    return total


def _personalization(prepared: PreparedRequest, ticket: Ticket) -> dict[str, Any]:
    return {
        **prepared.request.personalization.to_dict(),
        "head_versions": dict(ticket.head_versions),
        "user": prepared.user_id,
    }


def _submit(services: Services, runtime: ModelRuntime, prepared: PreparedRequest, n: int) -> list[Ticket]:
    """Queue the request's ``n`` choices together (they decode in the same running batch)."""
    tickets: list[Ticket] = []
    try:
        for request in prepared.choices(n):
            tickets.append(runtime.scheduler.submit(request))
    except QueueFullError as exc:
        for ticket in tickets:
            ticket.cancel()
        services.metrics.rejected.labels("queue_full").inc()
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}) from exc
    except SchedulerStoppedError as exc:
        for ticket in tickets:
            ticket.cancel()
        raise _stopped(exc) from exc
    return tickets


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

    def arm(self, tickets: Sequence[Ticket]) -> None:
        if self.deadline is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(self.deadline, _expire_all, tickets)

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.lease.release()


def _expire_all(tickets: Sequence[Ticket]) -> None:
    for ticket in tickets:
        ticket.expire()


async def _guarded(request: Request, services: Services) -> _Guard:
    """Admit a request: refused while draining, or over its key's in-flight limit."""
    if services.draining:
        raise _stopped(SchedulerStoppedError("the server is shutting down"))
    lease = services.in_flight.acquire(request.state.key_id)
    timeout = services.settings.request_timeout_s
    deadline = asyncio.get_running_loop().time() + timeout if timeout > 0 else None
    return _Guard(lease, deadline)


def _record(services: Services, outputs: Sequence[_Output]) -> None:
    prepared = outputs[0].prepared
    services.metrics.tokens.labels("prompt").inc(prepared.prompt_tokens)
    services.metrics.tokens.labels("completion").inc(sum(o.tokens for o in outputs))
    for objective in prepared.request.personalization.active_weights:
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


def _choice(
    kind: Kind,
    text: str,
    finish: str | None,
    *,
    delta: bool,
    first: bool = False,
    index: int = 0,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if kind == "text":
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    if delta:
        content: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish}
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
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
    n: int,
) -> Response:
    tickets = _submit(services, runtime, prepared, n)
    guard.arm(tickets)
    completion_id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    outputs = [_Output(prepared, runtime, index=i, explain=explain) for i in range(n)]
    reply = _Reply(kind, completion_id, created, prepared, tickets, outputs)
    if stream:
        return StreamingResponse(
            _sse(request, services, reply, include_usage, guard),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(guard.release),  # also when the stream never started
        )

    async def collect(ticket: Ticket, output: _Output) -> None:
        async for event in ticket.iter_events():
            output.add(event)

    async def collect_all() -> None:
        await asyncio.gather(*map(collect, tickets, outputs))

    collector = asyncio.create_task(collect_all())
    disconnect = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collector, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        guard.release()
        disconnect.cancel()
        if not collector.done():
            for ticket in tickets:
                ticket.cancel()
            collector.cancel()
    if not collector.done() or collector.cancelled():
        return Response(status_code=499)  # the client is gone; nobody reads this
    if (exc := collector.exception()) is not None:
        for ticket in tickets:
            ticket.cancel()
        raise _error_of(exc)
    _record(services, outputs)
    return JSONResponse(reply.whole())


@dataclass
class _Reply:
    """One response under construction: its choices' tickets and outputs, and how to write it."""

    kind: Kind
    completion_id: str
    created: int
    prepared: PreparedRequest
    tickets: list[Ticket]
    outputs: list[_Output]

    def envelope(self, *, chunk: bool) -> dict[str, Any]:
        return _envelope(self.kind, self.completion_id, self.created, self.prepared.model_id, chunk=chunk)

    def whole(self) -> dict[str, Any]:
        """The non-streamed body."""
        body = self.envelope(chunk=False)
        body["choices"] = []
        for o in self.outputs:
            logprobs = o.logprobs_json(self.kind, o.logprobs)
            choice = _choice(self.kind, o.text, o.finish_reason, delta=False, index=o.index, logprobs=logprobs)
            if o.explain:
                choice["token_contributions"] = o.explained
            body["choices"].append(choice)
        body["usage"] = _usage(self.outputs)
        body["compute"] = _compute_json(self.outputs)
        body["personalization"] = _personalization(self.prepared, self.tickets[0])
        return body

    def chunk(
        self,
        output: _Output,
        text: str,
        finish: str | None,
        *,
        first: bool = False,
        tokens: list[dict[str, Any]] | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self.envelope(chunk=True)
        choice = _choice(self.kind, text, finish, delta=True, first=first, index=output.index, logprobs=logprobs)
        body["choices"] = [choice]
        if tokens is not None:
            choice["token_contributions"] = tokens
        if first or finish is not None:
            body["personalization"] = _personalization(self.prepared, self.tickets[0])
        if finish is not None:
            body["compute"] = _compute_json([output])
        return body


def _sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _merged(tickets: Sequence[Ticket]) -> AsyncIterator[tuple[int, StreamEvent]]:
    """The events of every choice, as they come (choice index, event); a failure is raised."""
    queue: asyncio.Queue[tuple[int, StreamEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, ticket: Ticket) -> None:
        try:
            async for event in ticket.iter_events():
                await queue.put((index, event))
        except BaseException as exc:  # delivered to the reader, which raises it
            await queue.put((index, exc))
        await queue.put((index, None))

    pumps = [asyncio.create_task(pump(i, t)) for i, t in enumerate(tickets)]
    try:
        remaining = len(tickets)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()


def _stream_event(reply: _Reply, output: _Output, event: StreamEvent, first: bool) -> list[dict[str, Any]]:
    """The chunks one event makes (after the role chunk): its text, then its finish."""
    offset = len(output.text)
    output.add(event)
    logprobs = output.logprobs_json(reply.kind, event.tokens, offset) if event.tokens else None
    # With explain, every token's entry rides on a chunk: its text's, else the finishing one,
    # else an empty-text chunk of its own (a held-back character or stop-string prefix).
    tokens = [output.explained[-1]] if output.explain else None
    chunks = []
    if event.text or logprobs is not None or (tokens is not None and event.finish_reason is None):
        chunks.append(reply.chunk(output, event.text, None, first=first, tokens=tokens, logprobs=logprobs))
        tokens = None
    if event.finish_reason is not None:
        chunks.append(reply.chunk(output, "", event.finish_reason, tokens=tokens))
    return chunks


async def _sse(
    request: Request, services: Services, reply: _Reply, include_usage: bool, guard: _Guard
) -> AsyncIterator[str]:
    async def watch_disconnect() -> None:
        await _wait_for_disconnect(request)
        for ticket in reply.tickets:
            ticket.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    started: set[int] = set()
    try:
        async for index, event in _merged(reply.tickets):
            output = reply.outputs[index]
            first = index not in started
            if first and reply.kind == "chat":  # the role comes first, on its own
                yield _sse_data(reply.chunk(output, "", None, first=True))
                first = False
            started.add(index)
            for body in _stream_event(reply, output, event, first):
                yield _sse_data(body)
        _record(services, reply.outputs)
        if include_usage:
            tail = reply.envelope(chunk=True)
            tail["choices"] = []
            tail["usage"] = _usage(reply.outputs)
            tail["compute"] = _compute_json(reply.outputs)
            yield _sse_data(tail)
    except RequestCancelledError:
        return  # the client is gone
    except Exception as exc:
        error = _error_of(exc)
        yield _sse_data(error_body(error.message, error.type, error.param, error.code))
    finally:
        guard.release()
        watcher.cancel()
        for ticket in reply.tickets:
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
            n=body.n,
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
