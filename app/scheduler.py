"""The batching scheduler: many concurrent HTTP requests, one decoder thread.

Requests wait in a bounded queue (``QueueFullError`` -> 429 when it is full).
One worker thread owns the engine and keeps one running batch
(:class:`personalize.decoding.batch.DecodeBatch`) going while there is work:
after every decode step it routes each ``StreamEvent`` to its request's asyncio
queue on the event loop, drops the requests whose client went away (they stop
costing compute at once), lets waiting requests join up to ``max_batch_size``
live requests (each row with its own weights), then runs the next step. A
request that arrives mid-batch therefore starts after one step, not after the
longest answer of the batch; a seeded request decodes the same text whether it
joins a running batch or runs alone.

A request may carry a deadline: :meth:`Ticket.expire` drops it like a client
that left (it stops costing compute before the next step) and ends its event
stream with :class:`DeadlineExceededError`. The worker records when its last
step ended, so a health check can tell a dead or stuck decoder
(:meth:`Scheduler.health`).

Anything else that touches the engine (loading or removing heads) is submitted
with :meth:`Scheduler.call_between_batches`. While one waits, no request joins:
the running batch drains, the calls run on the decoder thread with no batch
open, then decoding resumes. So the engine is never used by two threads at
once, and the heads never change under a decoding request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from personalize.decoding.config import GenerationRequest, StreamEvent
from personalize.errors import PersonalizeError

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFullError(Exception):
    """The scheduler's queue is at capacity; the caller should retry later."""


class RequestCancelledError(Exception):
    """The request was cancelled (its client went away); ends its event stream."""


class SchedulerStoppedError(Exception):
    """The scheduler was stopped before the request ran."""


class DecoderDeadError(SchedulerStoppedError):
    """The decoder thread ended unexpectedly; nothing can be decoded until the service restarts."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before it finished; ends its event stream."""


class RunningBatch(Protocol):
    """What the scheduler needs from :class:`personalize.decoding.batch.DecodeBatch`."""

    @property
    def done(self) -> bool: ...

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]: ...

    def emit(self) -> list[StreamEvent]: ...

    def cancel(self, index: int) -> None: ...

    def advance(self) -> None: ...

    def close(self) -> None: ...

    @property
    def cache_tokens(self) -> int: ...

    @property
    def cache_bytes(self) -> int: ...


class Cost(Protocol):
    """A request's share of a batch at its widest (``personalize.decoding.engine.RequestCost``)."""

    @property
    def rows(self) -> int: ...

    @property
    def sequences(self) -> int: ...

    @property
    def kv_bytes(self) -> int: ...


class StreamingEngine(Protocol):
    """What the scheduler needs from :class:`personalize.decoding.engine.Engine`."""

    def open_batch(self) -> RunningBatch: ...

    def validate(self, request: GenerationRequest) -> None: ...

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]: ...

    def cost(self, request: GenerationRequest) -> Cost: ...


@dataclass
class Ticket:
    """One queued request and the channel its events come back on."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[StreamEvent | BaseException] = field(default_factory=asyncio.Queue)
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that steered it, fixed when it joins the batch."""
    batch_size: int = 0
    """Live requests in the running batch right after it joined (itself included)."""
    cost: Cost | None = None
    """Its rows and KV bytes at its widest, once the decoder has looked at it."""
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Drop the request (its client disconnected); safe to call from any thread.

        Whoever is still iterating its events gets :class:`RequestCancelledError`."""
        self._drop(RequestCancelledError())

    def expire(self) -> None:
        """Drop the request because its deadline passed; its events end with :class:`DeadlineExceededError`."""
        self._drop(DeadlineExceededError("the request's deadline passed before it finished"))

    def _drop(self, reason: BaseException) -> None:
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._deliver(reason)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _deliver(self, item: StreamEvent | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._cancelled.set()

    async def iter_events(self) -> AsyncIterator[StreamEvent]:
        """Events until the one with ``finish_reason`` (re-raises a decoding error)."""
        while True:
            item = await self.events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                return


@dataclass
class _Control:
    fn: Callable[[], Any]
    future: Future[Any]


class Scheduler:
    def __init__(
        self,
        engine: StreamingEngine,
        *,
        max_queue: int,
        max_batch_size: int,
        batch_window_s: float = 0.0,
        max_batch_rows: int | None = None,
        max_kv_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        """Most requests decoding at once; the others wait in the queue."""
        self.max_batch_rows = max_batch_rows
        """Most batch rows at once (each request counted at its widest: every sample, every adapter row);
        None: no limit. A request that does not fit waits for the batch to shrink, the ones behind it too
        (first come, first served); an idle decoder always takes the first request, whatever its size."""
        self.max_kv_bytes = max_kv_bytes
        """The same for the KV cache the live requests would hold at their token limits."""
        self.kv_cache_tokens = 0
        """Positions the running batch's KV cache holds (read by /metrics)."""
        self.kv_cache_bytes = 0
        """Bytes it allocates."""
        self.batch_window_s = batch_window_s
        """How long an idle decoder waits after the first request for others to start with it."""
        self.requests_per_batch = 1024
        """A running batch keeps the bookkeeping of every request that joined it until it closes:
        after this many it takes no more, drains, and a fresh one opens."""
        self._pending: deque[Ticket] = deque()
        self._controls: deque[_Control] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="decoder", daemon=True)
        self.batches_run = 0
        """Times the decoder went from idle to decoding (a busy spell is one batch however
        many requests join it)."""
        self.dropped = 0
        """Requests dropped because their client left (before or during decoding)."""
        self.largest_batch = 0
        """Most requests ever decoding at once."""
        self.on_batch: Callable[[int], None] | None = None
        """Called (on the worker thread) with the number of live requests each time requests
        join the batch (the first ones included)."""
        self.busy = False
        """The worker is decoding (or running a head change) rather than waiting for work."""
        self.last_progress = time.monotonic()
        """When the worker last finished a step (or picked up work)."""

    # ---- public API (event loop / any thread) -------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting for the decoder (not counting those decoding, nor requests whose
        client already left)."""
        return sum(1 for ticket in list(self._pending) if not ticket.cancelled)

    def start(self) -> None:
        self._thread.start()

    def health(self, stall_s: float) -> str | None:
        """What is wrong with the decoder thread (dead, or busy with no step for ``stall_s``), or None."""
        if self._stopping:
            return "decoder: stopped"
        if self._thread.ident is not None and not self._thread.is_alive():
            return "decoder: the thread is not running"
        quiet = time.monotonic() - self.last_progress
        if self.busy and quiet > stall_s:
            return f"decoder: stuck, no step has ended for {quiet:.0f} s"
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse queued requests and calls; requests already decoding finish first."""
        with self._wakeup:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            controls, self._controls = list(self._controls), deque()
            self._wakeup.notify_all()
        for ticket in pending:
            ticket._deliver(SchedulerStoppedError("the server is shutting down"))
        for control in controls:
            control.future.set_exception(SchedulerStoppedError("the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def submit(self, request: GenerationRequest) -> Ticket:
        """Queue a request; call from the event loop. Raises QueueFullError when full."""
        ticket = Ticket(request, asyncio.get_running_loop())
        with self._wakeup:
            if self._stopping:
                raise SchedulerStoppedError("the server is shutting down")
            if self._thread.ident is not None and not self._thread.is_alive():
                raise DecoderDeadError("the decoder thread is not running; the service needs a restart")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"the decoder queue is full ({self.max_queue} requests waiting); retry shortly")
            self._pending.append(ticket)
            self._wakeup.notify()
        return ticket

    def call_between_batches(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the decoder thread when no batch is running.

        From now on no request joins the running batch; ``fn`` runs once it has drained."""
        future: Future[T] = Future()
        with self._wakeup:
            if self._stopping:
                future.set_exception(SchedulerStoppedError("the server is shutting down"))
                return future
            self._controls.append(_Control(fn, future))
            self._wakeup.notify()
        return future

    # ---- worker thread -----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._wakeup:
                self.busy = False
                while not self._stopping and not self._pending and not self._controls:
                    self._wakeup.wait()
                if self._stopping:
                    return
                self.busy, self.last_progress = True, time.monotonic()
                controls, self._controls = list(self._controls), deque()
            for control in controls:
                self._run_control(control)
            self._run_batch()

    @staticmethod
    def _run_control(control: _Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return
        try:
            control.future.set_result(control.fn())
        except BaseException as exc:
            control.future.set_exception(exc)

    def _run_batch(self) -> None:
        """Decode until nothing is live and nobody may join: step, route, drop, admit, repeat."""
        batch = self.engine.open_batch()
        live: dict[int, Ticket] = {}  # event index -> ticket, for requests still decoding
        joined = 0
        try:
            while True:
                if joined < self.requests_per_batch:
                    joined += self._join(batch, live)
                if batch.done:
                    return
                self._drop_cancelled(batch, live)
                for event in batch.emit():
                    ticket = live.get(event.index)
                    if ticket is None:  # cancelled (already counted as dropped)
                        continue
                    if not ticket.cancelled:  # it left during this step: dropped before the next
                        ticket._deliver(event if event.error is None else event.error)
                    if event.finish_reason is not None or event.error is not None:
                        del live[event.index]
                self.kv_cache_tokens, self.kv_cache_bytes = batch.cache_tokens, batch.cache_bytes
                batch.advance()
                self.last_progress = time.monotonic()
        except Exception as exc:
            log.exception("decoding a batch of %d requests failed", len(live))
            for ticket in live.values():
                ticket._deliver(exc)
        finally:
            batch.close()
            self.kv_cache_tokens = self.kv_cache_bytes = 0

    def _drop_cancelled(self, batch: RunningBatch, live: dict[int, Ticket]) -> None:
        """Requests whose client left emit nothing more and leave before the next forward."""
        for index, ticket in list(live.items()):
            if ticket.cancelled:
                batch.cancel(index)
                del live[index]
                self.dropped += 1

    def _join(self, batch: RunningBatch, live: dict[int, Ticket]) -> int:
        """Let waiting requests join, up to ``max_batch_size`` live; returns how many joined.

        An idle batch prefills them at once; a running one after its next forward."""
        idle = batch.done
        tickets = self._admit(self._take(self.max_batch_size - len(live), idle=idle, live=live))
        if not tickets:
            return 0
        try:
            indices = batch.add([t.request for t in tickets])
        except Exception as exc:
            for ticket in tickets:
                ticket._deliver(exc)
            raise
        live.update(zip(indices, tickets, strict=True))
        for ticket in tickets:
            ticket.batch_size = len(live)
        if idle:
            self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(live))
        if self.on_batch is not None:
            self.on_batch(len(live))
        return len(tickets)

    def _take(self, room: int, *, idle: bool, live: Mapping[int, Ticket]) -> list[Ticket]:
        """Up to ``room`` waiting requests, in order, while they fit the row and KV budgets; none while a
        head change waits (the batch drains first)."""
        if room <= 0:
            return []
        with self._wakeup:
            if idle:
                self._gather_window()
            if self._stopping or self._controls:
                return []
            taken: list[Ticket] = []
            while self._pending and len(taken) < room:
                ticket = self._pending[0]
                if not ticket.cancelled and not self._fits(ticket, [*live.values(), *taken]):
                    break  # it waits for the batch to shrink; first come, first served
                self._pending.popleft()
                if ticket.cancelled:
                    self.dropped += 1
                else:
                    taken.append(ticket)
            return taken

    def _fits(self, ticket: Ticket, running: Sequence[Ticket]) -> bool:
        """Whether ``ticket`` joins ``running`` within the budgets (always, when nothing runs)."""
        if not running or (self.max_batch_rows is None and self.max_kv_bytes is None):
            return True
        costs = [self._cost(t) for t in (*running, ticket)]
        if any(c is None for c in costs):
            return True  # an invalid request: validation answers it, not the budget
        rows = sum(c.rows for c in costs if c is not None)
        kv = sum(c.kv_bytes for c in costs if c is not None)
        return (self.max_batch_rows is None or rows <= self.max_batch_rows) and (
            self.max_kv_bytes is None or kv <= self.max_kv_bytes
        )

    def _cost(self, ticket: Ticket) -> Cost | None:
        if ticket.cost is None:
            try:
                ticket.cost = self.engine.cost(ticket.request)
            except PersonalizeError:
                return None
        return ticket.cost

    def _gather_window(self) -> None:
        """Requests sent "at the same time" arrive milliseconds apart: give them a moment to
        start with the first one, so their prompts are prefilled in one forward instead of
        joining one step later each. Holds the lock."""
        if self.batch_window_s <= 0 or not self._pending:
            return
        deadline = time.monotonic() + self.batch_window_s
        while not self._stopping and not self._controls and len(self._pending) < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wakeup.wait(left)

    def _admit(self, tickets: list[Ticket]) -> list[Ticket]:
        """Re-check each request against the current heads (they may have changed while it waited);
        a refused request gets its error, the others go on."""
        admitted = []
        for ticket in tickets:
            try:
                self.engine.validate(ticket.request)
                steering = list(ticket.request.personalization.active_weights)
                ticket.head_versions = self.engine.head_versions(steering)
            except PersonalizeError as exc:
                ticket._deliver(exc)
                continue
            admitted.append(ticket)
        return admitted
