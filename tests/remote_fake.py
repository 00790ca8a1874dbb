"""An in-process upstream built from a real (tiny) model: it samples exactly from its top-k at the
asked temperature and returns the raw top-k log-probabilities, as a pinned vLLM does."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from personalize.errors import UpstreamError, UpstreamTimeoutError
from personalize.models import BaseModel
from personalize.remote.upstream import TOKENIZER_PROBES, ChunkRequest, Proposal, UpstreamInfo


class ModelUpstream:
    name = "in-process upstream"

    def __init__(
        self,
        base: BaseModel,
        *,
        context_length: int | None = None,
        outside_top_k: bool = False,
        fail_after: int | None = None,
    ) -> None:
        self.base = base
        self.context_length = context_length
        self.outside_top_k = outside_top_k  # misbehave: sample the (k+1)-th token
        self.fail_after = fail_after  # raise on calls after this many
        self.down = False  # every call fails and health checks say so, until set back
        self.timing_out = False  # every call times out
        self.hold: threading.Event | None = None  # calls wait for it (or for their cancellation)
        self.cancelled_calls = 0
        self.calls = 0
        self.requests: list[ChunkRequest] = []
        self._lock = threading.Lock()

    def propose(self, request: ChunkRequest, cancelled: threading.Event | None = None) -> Proposal | None:
        with self._lock:
            self.calls += 1
            self.requests.append(request)
            if self.down or (self.fail_after is not None and self.calls > self.fail_after):
                raise UpstreamError(f"{self.name} is down")
            if self.timing_out:
                raise UpstreamTimeoutError(f"{self.name} timed out")
        if self.hold is not None:
            while not self.hold.wait(0.01):
                if cancelled is not None and cancelled.is_set():
                    with self._lock:
                        self.cancelled_calls += 1
                    return None
        gen = torch.Generator().manual_seed(request.seed)
        ids = list(request.prompt_ids)
        tokens, top_ids, top_lp = [], [], []
        eos = set(self.base.eos_token_ids)
        finish = "length"
        with torch.inference_mode():
            for _ in range(request.max_tokens):
                logits = self.base.model(torch.tensor([ids])).logits[0, -1].float()
                values, order = torch.log_softmax(logits, -1).topk(request.top_k + 1)
                values, order, extra = values[:-1], order[:-1], int(order[-1])
                if self.outside_top_k:
                    token = extra
                elif request.temperature == 0:
                    token = int(order[0])
                else:
                    probs = torch.softmax(values / request.temperature, -1)
                    token = int(order[torch.multinomial(probs, 1, generator=gen)])
                tokens.append(token)
                top_ids.append(order)
                top_lp.append(values)
                ids.append(token)
                if token in eos and not request.ignore_eos:
                    finish = "stop"
                    break
        return Proposal(tuple(tokens), torch.stack(top_ids), torch.stack(top_lp), finish)

    def info(self) -> UpstreamInfo:
        return UpstreamInfo("tiny", self.context_length)

    def check_tokenizer(self, encode: Callable[[str], list[int]]) -> None:
        from personalize.errors import UpstreamContractError

        for probe in TOKENIZER_PROBES:
            if list(encode(probe)) != list(self.base.tokenizer(probe, add_special_tokens=False)["input_ids"]):
                raise UpstreamContractError(f"{self.name} tokenizes {probe!r} differently")

    def healthy(self) -> bool:
        return not self.down
