"""The per-request cap on total work, checked before a request is queued.

    work = sequences x rows x (prompt tokens + max_tokens)

- rows: a sequence's batch rows, 1 base row + 1 per adapter head (``lora`` or
  ``implicit``) with a non-zero weight when the method steers token by token
  (``vas``, ``ivg``); ``linear`` heads add no row; ``base``, ``bon`` and ``aisp``
  sequences are 1 row.
- sequences: 1 for ``base``/``vas``; ``best_of`` for ``bon``; ``candidates x beams``
  for ``ivg``; ``samples x iterations`` for ``aisp``.

It is an upper bound of the row-tokens the request may push through the model
(every sequence assumed to run to ``max_tokens``). Over ``max_request_work`` the
request is refused with 422 naming the field that multiplies the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import APIError
from personalize.decoding.config import GenerationRequest

ADAPTER_KINDS = frozenset({"lora", "implicit"})
ROW_METHODS = frozenset({"vas", "ivg"})


@dataclass(frozen=True)
class Work:
    sequences: int
    rows: int
    tokens: int
    field: str
    """The request field that sets ``sequences`` (or ``max_tokens`` when one sequence)."""
    hint: str
    """What to lower, in words."""

    @property
    def total(self) -> int:
        return self.sequences * self.rows * self.tokens


def request_work(request: GenerationRequest, head_kinds: Mapping[str, str]) -> Work:
    p = request.personalization
    tokens = len(request.prompt_ids) + request.sampling.max_new_tokens
    rows = 1
    if p.method in ROW_METHODS:
        rows += sum(1 for name in p.active_weights if head_kinds.get(name) in ADAPTER_KINDS)
    if p.method == "bon":
        return Work(p.best_of, rows, tokens, "personalization.best_of", "best_of or max_tokens")
    if p.method == "ivg":
        return Work(p.ivg.sequences, rows, tokens, "personalization.ivg", "ivg.candidates x ivg.beams or max_tokens")
    if p.method == "aisp":
        return Work(p.aisp.total, rows, tokens, "personalization.aisp", "aisp.samples x aisp.iterations or max_tokens")
    return Work(1, rows, tokens, "max_tokens", "max_tokens, the prompt or the number of weighted adapter heads")


def check_work(request: GenerationRequest, head_kinds: Mapping[str, str], cap: int) -> Work:
    """The request's work; APIError 422 naming the field and the cap when it is over ``cap``."""
    work = request_work(request, head_kinds)
    if work.total > cap:
        raise APIError(
            422,
            f"this request's work is {work.sequences} sequence(s) x {work.rows} row(s) x {work.tokens} tokens "
            f"(prompt + max_tokens) = {work.total} row-tokens; the cap per request is {cap}: lower {work.hint}",
            param=work.field,
            code="work_limit_exceeded",
        )
    return work
