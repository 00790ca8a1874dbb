"""The per-request cap on total work, checked before a request is queued.

    work = sequences x rows x (prompt tokens + max_tokens)

- rows: a sequence's batch rows as the engine lays them out (``Engine.cost``): 1 base row
  + 1 per adapter head (``lora`` or ``implicit``) it reads (``vas``, ``ivg``); ``linear``
  heads add no row; ``base``, ``bon`` and ``aisp`` sequences are 1 row.
- sequences: 1 for ``base``/``vas``; ``best_of`` for ``bon``; ``candidates x beams``
  for ``ivg``; ``samples x iterations`` for ``aisp``.

It is an upper bound of the row-tokens the request may push through the model
(every sequence assumed to run to ``max_tokens``). Over ``max_request_work`` the
request is refused with 422 naming the field that multiplies the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from app.errors import APIError
from app.scheduler import Cost
from personalize.decoding.config import GenerationRequest


class Costed(Protocol):
    def cost(self, request: GenerationRequest) -> Cost: ...


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


def request_work(request: GenerationRequest, engine: Costed, copies: int = 1) -> Work:
    """The work of ``copies`` answers to ``request`` (``n``)."""
    p = request.personalization
    tokens = len(request.prompt_ids) + request.sampling.max_new_tokens
    cost = engine.cost(request)
    rows = cost.rows // cost.sequences  # each sequence of a request has the same rows
    if p.method == "bon":
        sequences, field, hint = p.best_of, "personalization.best_of", "best_of or max_tokens"
    elif p.method == "ivg":
        sequences, field, hint = p.ivg.sequences, "personalization.ivg", "ivg.candidates x ivg.beams or max_tokens"
    elif p.method == "aisp":
        sequences, field, hint = p.aisp.total, "personalization.aisp", "aisp.samples x aisp.iterations or max_tokens"
    else:
        sequences, field, hint = 1, "max_tokens", "max_tokens, the prompt or the number of weighted adapter heads"
    if copies > 1:
        return Work(sequences * copies, rows, tokens, "n", f"n, or {hint}")
    return Work(sequences, rows, tokens, field, hint)


def check_work(
    request: GenerationRequest, engine: Costed, cap: int, copies: int = 1, max_rows: int | None = None
) -> Work:
    """The request's work (``copies`` answers); APIError 422 naming the field and the cap when it is over ``cap``,
    or when its rows at once are more than the batch may hold (``max_rows``): such a request would run alone
    and hold every other request back until it ends."""
    work = request_work(request, engine, copies)
    if max_rows is not None and work.sequences * work.rows > max_rows:
        raise APIError(
            422,
            f"this request decodes {work.sequences} sequence(s) x {work.rows} row(s) = {work.sequences * work.rows} "
            f"batch rows at once; a request may hold at most {max_rows} "
            f"(PERSONALIZE_MAX_REQUEST_ROWS, PERSONALIZE_MAX_BATCH_ROWS): lower {work.hint}",
            param=work.field,
            code="row_limit_exceeded",
        )
    if work.total > cap:
        raise APIError(
            422,
            f"this request's work is {work.sequences} sequence(s) x {work.rows} row(s) x {work.tokens} tokens "
            f"(prompt + max_tokens) = {work.total} row-tokens; the cap per request is {cap}: lower {work.hint}",
            param=work.field,
            code="work_limit_exceeded",
        )
    return work
