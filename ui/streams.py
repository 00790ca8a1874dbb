"""Several answers streamed at once (base and personalized side by side), shown as they arrive.

Each stream runs on its own thread and hands its chunks to the calling (script)
thread through one queue, so the page's placeholders are only touched there.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ui.client import ApiError, Delta, TokenPush

StreamSource = Callable[[], Iterator[Delta]]


@dataclass
class Answer:
    """One answer as it builds up."""

    text: str = ""
    tokens: list[TokenPush] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int | None = None
    personalization: Mapping[str, Any] | None = None
    compute: Mapping[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    done: bool = False

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.tokens.extend(delta.tokens)
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
        if delta.completion_tokens is not None:
            self.completion_tokens = delta.completion_tokens
        if delta.personalization is not None:
            self.personalization = delta.personalization
        if delta.compute is not None:
            self.compute = delta.compute

    @property
    def words(self) -> int:
        return len(self.text.split())

    def length_label(self) -> str:
        tokens = f"{self.completion_tokens} tokens · " if self.completion_tokens is not None else ""
        return f"{tokens}{self.words} words · {len(self.text)} characters"

    def compute_label(self) -> str:
        """What the answer cost, from the API's ``compute``: forwards, samples and estimated GFLOPs."""
        c = self.compute or {}
        if not c:
            return ""
        parts = [f"{c['forwards']} forwards" if "forwards" in c else ""]
        if c.get("samples", 1) != 1:
            parts.append(f"{c['samples']} samples")
        if "flops" in c:
            parts.append(f"{float(c['flops']) / 1e9:.1f} GFLOPs")
        return " · ".join(p for p in parts if p)


@dataclass(frozen=True)
class _End:
    error: BaseException | None = None


def _pump(label: str, source: StreamSource, out: queue.Queue[tuple[str, Delta | _End]]) -> None:
    error: Exception | None = None
    try:
        for delta in source():
            out.put((label, delta))
    except Exception as exc:  # handed to the script thread, which shows it
        error = exc
    finally:
        out.put((label, _End(error)))


def stream_side_by_side(
    sources: Mapping[str, StreamSource],
    on_update: Callable[[str, Answer], None],
    *,
    timeout_s: float = 600.0,
) -> dict[str, Answer]:
    """Run every source at once; call ``on_update(label, answer)`` on this thread after each chunk."""
    answers = {label: Answer() for label in sources}
    inbox: queue.Queue[tuple[str, Delta | _End]] = queue.Queue()
    start = time.perf_counter()
    for label, source in sources.items():
        threading.Thread(target=_pump, args=(label, source, inbox), name=f"stream-{label}", daemon=True).start()
    pending = set(sources)
    deadline = start + timeout_s
    while pending:
        try:
            label, item = inbox.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
            for label in pending:
                answers[label].error = f"no answer within {timeout_s:.0f} s"
                answers[label].done = True
                on_update(label, answers[label])
            break
        answer = answers[label]
        if isinstance(item, _End):
            pending.discard(label)
            answer.done = True
            answer.seconds = time.perf_counter() - start
            if item.error is not None:
                error = item.error
                answer.error = str(error) if isinstance(error, ApiError) else f"{type(error).__name__}: {error}"
        else:
            answer.add(item)
        on_update(label, answer)
    return answers
