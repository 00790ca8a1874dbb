"""The batching scheduler: many concurrent HTTP requests, one decoder thread.

Requests wait in a bounded queue (``QueueFullError`` -> 429 when it is full).
One worker thread owns the engine: whenever the engine is free it takes every
waiting request, up to ``max_batch_size``, and decodes them together in one
``engine.stream(...)`` call (each row with its own weights), routing each
``StreamEvent`` to its request's asyncio queue on the event loop. A request whose
client went away is dropped: its events are discarded, and a batch whose every
request is gone stops decoding at once.

Anything else that touches the engine (loading or removing heads) is submitted
with :meth:`Scheduler.call_between_batches` and runs on the same thread between
two batches, so the engine is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
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


class StreamingEngine(Protocol):
    """What the scheduler needs from :class:`personalize.decoding.engine.Engine`."""

    def stream(self, requests: Sequence[GenerationRequest]) -> Iterator[StreamEvent]: ...

    def validate(self, request: GenerationRequest) -> None: ...

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]: ...


@dataclass
class Ticket:
    """One queued request and the channel its events come back on."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[StreamEvent | BaseException] = field(default_factory=asyncio.Queue)
    head_versions: Mapping[str, str] = field(default_factory=dict)
    """The versions of the heads that steered it, fixed when its batch starts."""
    batch_size: int = 0
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Drop the request (its client disconnected); safe to call from any thread.

        Whoever is still iterating its events gets :class:`RequestCancelledError`."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._deliver(RequestCancelledError())

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
        self, engine: StreamingEngine, *, max_queue: int, max_batch_size: int, batch_window_s: float = 0.0
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        """How long an idle decoder waits after the first request for others to join its batch."""
        self._pending: deque[Ticket] = deque()
        self._controls: deque[_Control] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="decoder", daemon=True)
        self.batches_run = 0
        self.dropped = 0
        """Requests dropped because their client left (before or during decoding)."""
        self.largest_batch = 0
        self.on_batch: Callable[[int], None] | None = None
        """Called (on the worker thread) with the size of every batch it starts."""

    # ---- public API (event loop / any thread) -------------------------------------------
    @property
    def depth(self) -> int:
        """Requests waiting for the decoder (not counting the batch being decoded, nor
        requests whose client already left)."""
        return sum(1 for ticket in list(self._pending) if not ticket.cancelled)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
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
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"the decoder queue is full ({self.max_queue} requests waiting); retry shortly")
            self._pending.append(ticket)
            self._wakeup.notify()
        return ticket

    def call_between_batches(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the decoder thread when no batch is running."""
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
                while not self._stopping and not self._pending and not self._controls:
                    self._wakeup.wait()
                if self._stopping:
                    return
                self._gather_window()
                controls, self._controls = list(self._controls), deque()
                batch: list[Ticket] = []
                while self._pending and len(batch) < self.max_batch_size:
                    ticket = self._pending.popleft()
                    if ticket.cancelled:
                        self.dropped += 1
                    else:
                        batch.append(ticket)
            for control in controls:
                self._run_control(control)
            if batch:
                self._run_batch(batch)

    def _gather_window(self) -> None:
        """Requests sent "at the same time" arrive milliseconds apart: give them a moment to
        join the first one, since a running batch cannot take new rows. Holds the lock."""
        if self.batch_window_s <= 0 or not self._pending:
            return
        deadline = time.monotonic() + self.batch_window_s
        while not self._stopping and len(self._pending) < self.max_batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wakeup.wait(left)

    @staticmethod
    def _run_control(control: _Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return
        try:
            control.future.set_result(control.fn())
        except BaseException as exc:
            control.future.set_exception(exc)

    def _admit(self, batch: list[Ticket]) -> list[Ticket]:
        """Re-check each request against the current heads (they may have changed while it waited)."""
        admitted = []
        for ticket in batch:
            try:
                self.engine.validate(ticket.request)
                steering = list(ticket.request.personalization.active_weights)
                ticket.head_versions = self.engine.head_versions(steering)
            except PersonalizeError as exc:
                ticket._deliver(exc)
                continue
            admitted.append(ticket)
        return admitted

    def _run_batch(self, batch: list[Ticket]) -> None:
        batch = self._admit(batch)
        if not batch:
            return
        for ticket in batch:
            ticket.batch_size = len(batch)
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        if self.on_batch is not None:
            self.on_batch(len(batch))
        done = [False] * len(batch)
        events = self.engine.stream([t.request for t in batch])
        try:
            for event in events:
                ticket = batch[event.index]
                if not ticket.cancelled:
                    ticket._deliver(event)
                if event.finish_reason is not None:
                    done[event.index] = True
                if all(d or t.cancelled for d, t in zip(done, batch, strict=True)):
                    break  # everyone still listening has finished (or left): free the engine
        except Exception as exc:
            log.exception("decoding a batch of %d failed", len(batch))
            for ticket, finished in zip(batch, done, strict=True):
                if not finished:
                    ticket._deliver(exc)
        finally:
            self.dropped += sum(1 for d, t in zip(done, batch, strict=True) if t.cancelled and not d)
            close = getattr(events, "close", None)
            if close is not None:
                close()
