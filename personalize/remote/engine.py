"""RemoteEngine: the engine facade over a remote base model and the local heads that steer it.

It answers what :class:`personalize.decoding.engine.Engine` answers (heads, validation, batches,
costs), so the CLI, the evaluation and the service's scheduler use either the same way. The
heads and the local backbone that carries them are a local ``Engine``'s; the base model's
tokens come from the upstream.

At construction it proves the upstream fits: it serves the named model, its tokenizer gives the
same token ids as the local backbone's (or a declared tokenizer hash equals the local one), and
its context length is read and enforced.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Iterator, Mapping, Sequence

from personalize.decoding.config import GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.engine import Engine, RequestCost
from personalize.decoding.head_set import HeadSet
from personalize.decoding.requests import RewardFn
from personalize.decoding.sequences import SequenceSpec
from personalize.errors import ConfigError, ContextLengthError, UpstreamContractError
from personalize.heads import HeadMeta, ValueHead
from personalize.models import BaseModel
from personalize.remote.batch import RemoteBatch
from personalize.remote.upstream import Upstream

REMOTE_METHODS = ("base", "vas", "bon")
"""What a remote base model supports: ``ivg`` needs chunk-level search over local candidates (not
built for remote models), ``aisp`` perturbs the base model's pre-logit hidden state (not exposed
by a serving engine)."""


class RemoteEngine:
    """Decodes requests on an upstream engine, steered by the heads of ``local``."""

    def __init__(
        self,
        local: Engine,
        upstream: Upstream,
        *,
        tokenizer_hash: str | None = None,
        workers: int = 32,
    ) -> None:
        """``tokenizer_hash``: the upstream's tokenizer fingerprint, if declared (for servers without
        ``/tokenize``); it must equal the local backbone's. ``workers``: upstream calls in flight at once."""
        self.local = local
        self.upstream = upstream
        info = upstream.info()
        if tokenizer_hash is not None:
            if tokenizer_hash != local.base.tokenizer_hash:
                raise UpstreamContractError(
                    f"the declared upstream tokenizer hash {tokenizer_hash[:12]}... differs from the local "
                    f"backbone's {local.base.tokenizer_hash[:12]}...: the heads need the upstream's tokenizer"
                )
        else:
            tokenizer = local.base.tokenizer
            upstream.check_tokenizer(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
        limits = [n for n in (info.context_length, local.base.context_length) if n]
        self.context_length = min(limits)
        """Prompt + max_new_tokens must fit the upstream's context and the local backbone's."""
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream")
        self._healthy, self._checked_at = True, 0.0

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- what the local engine answers -------------------------------------------------------
    @property
    def base(self) -> BaseModel:
        return self.local.base

    @property
    def heads(self) -> HeadSet:
        return self.local.heads

    @property
    def objectives(self) -> Mapping[str, HeadMeta]:
        return self.local.objectives

    def reward_names(self) -> dict[str, str]:
        return self.local.reward_names()

    def add_head(self, head: ValueHead) -> None:
        self.local.add_head(head)

    def remove_head(self, objective: str) -> None:
        self.local.remove_head(objective)

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]:
        return self.local.head_versions(objectives)

    def head_kinds(self) -> dict[str, str]:
        return self.local.head_kinds()

    def rows_for(self, spec: SequenceSpec) -> int:
        return self.local.rows_for(spec)

    def cost(self, request: GenerationRequest) -> RequestCost:
        return self.local.cost(request)

    def healthy(self) -> bool:
        """Whether the upstream answers (asked at most once a second, however often this is called)."""
        now = time.monotonic()
        if now - self._checked_at >= 1.0:
            self._healthy, self._checked_at = self.upstream.healthy(), now
        return self._healthy

    # ---- decoding ----------------------------------------------------------------------------
    def validate(self, request: GenerationRequest, *, reward_given: bool = False) -> None:
        """The local engine's checks, then what a remote model cannot do, and the upstream's context."""
        method = request.personalization.method
        if method not in REMOTE_METHODS:
            why = {
                "ivg": "its chunk-level search over local candidates is not built for remote models",
                "aisp": "it perturbs the base model's pre-logit hidden state, which a serving engine does not expose",
            }.get(method, "")
            raise ConfigError(
                f"method {method!r} is not available with a remote base model ({self.upstream.name}): {why}; "
                f"valid methods here: {', '.join(REMOTE_METHODS)}"
            )
        if request.sampling.logit_bias:
            raise ConfigError(
                "logit_bias is not available with a remote base model: the upstream samples from its own "
                "distribution, and the speculative test needs that distribution unchanged"
            )
        need = len(request.prompt_ids) + request.sampling.max_new_tokens
        if need > self.context_length:
            raise ContextLengthError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_new_tokens ({request.sampling.max_new_tokens}) "
                f"= {need} exceeds the context of {self.context_length} tokens ({self.upstream.name})"
            )
        self.local.validate(request, reward_given=reward_given)

    def open_batch(self, reward: RewardFn | None = None) -> RemoteBatch:
        return RemoteBatch(self, reward)

    def generate(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> list[GenerationResult]:
        return self.open_batch(reward).generate(requests)

    def stream(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> Iterator[StreamEvent]:
        return self.open_batch(reward).run(requests)
