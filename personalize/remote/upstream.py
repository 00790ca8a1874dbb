"""The remote engine behind one seam: propose a chunk, tell its limits, prove its tokenizer.

:class:`OpenAIUpstream` talks to any OpenAI-compatible server that takes a prompt as token ids
and returns per-token top log-probabilities with token ids (vLLM: ``/v1/completions`` with
``return_tokens_as_token_ids``). Every request pins what the proposal distribution q depends
on — temperature, ``top_k``, ``top_p = 1``, ``min_p = 0``, no penalties, a seed — so a server's
own generation defaults cannot leak in, and asks for raw log-probabilities (vLLM's default
``logprobs_mode``). An answer that contradicts q (a sampled token outside the returned top-k,
missing log-probabilities) raises :class:`UpstreamContractError`; it is never used.

Failures: connection errors, 429 and 5xx answers are retried with exponential backoff; what
still fails raises :class:`UpstreamError` (502) or :class:`UpstreamTimeoutError` (504), naming
the upstream. A client that goes away sets the call's ``cancelled`` event: the streamed upstream
response is closed at once, which aborts the upstream request.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import torch

from personalize.errors import UpstreamContractError, UpstreamError, UpstreamTimeoutError

TOP_K = 20
"""Candidates per position: the upstream's top-k (vLLM returns at most 20 log-probabilities)."""

TOKENIZER_PROBES = (
    "Hello, world! How do I clean my keyboard?",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Unicode: café, naïve, 日本語, emoji 🙂 and ∑ symbols",
    "def f(x):\n    return x ** 2  # code",
    "<|im_start|>user\nHi<|im_end|>",
)
"""Texts whose token ids must agree between the local tokenizer and the upstream's."""


@dataclass(frozen=True)
class ChunkRequest:
    """One proposal: continue ``prompt_ids`` by up to ``max_tokens`` tokens, sampled from q."""

    prompt_ids: Sequence[int]
    max_tokens: int
    temperature: float
    seed: int
    top_k: int = TOP_K
    ignore_eos: bool = False


@dataclass(frozen=True)
class Proposal:
    """What the upstream sampled: per position the token and the top-k of its distribution."""

    tokens: tuple[int, ...]  # (L,)
    top_ids: torch.Tensor  # (L, k) int64, by decreasing log-probability (padding: 0, invalid)
    top_logprobs: torch.Tensor  # (L, k) float32 raw log-probabilities (padding: -inf)
    finish_reason: str | None


@dataclass(frozen=True)
class UpstreamInfo:
    model: str
    context_length: int | None  # None: the upstream did not say


class Upstream(Protocol):
    """What the remote batch needs of an upstream engine (tests use an in-process one)."""

    name: str

    def propose(self, request: ChunkRequest, cancelled: threading.Event | None = None) -> Proposal | None:
        """A chunk sampled from q, or None when ``cancelled`` was set meanwhile."""
        ...

    def info(self) -> UpstreamInfo: ...

    def check_tokenizer(self, encode: Any) -> None:
        """Raise :class:`UpstreamContractError` unless the upstream tokenizes like ``encode``."""
        ...

    def healthy(self) -> bool: ...


def parse_top(
    tokens: Sequence[int], tops: Sequence[dict[int, float]], top_k: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position, the ``top_k`` highest log-probabilities (sorted) as (L, k) ids and values.

    Raises if a position has none, or if its sampled token is not among them (the upstream then
    did not sample from its top-k: q is not what it returned)."""
    L = len(tokens)
    ids = torch.zeros(L, top_k, dtype=torch.long)
    values = torch.full((L, top_k), -math.inf)
    for t, (token, top) in enumerate(zip(tokens, tops, strict=True)):
        if not top:
            raise UpstreamContractError(f"{where} returned no log-probabilities at position {t}")
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:top_k]
        if token not in {tid for tid, _ in ranked}:
            raise UpstreamContractError(
                f"{where} sampled token {token} at position {t}, outside the top-{top_k} it returned: its "
                "sampling is not restricted to that top-k (top_k, temperature and penalties must be honoured)"
            )
        for c, (tid, value) in enumerate(ranked):
            ids[t, c], values[t, c] = tid, value
    return ids, values


def _token_id(text: str) -> int:
    """vLLM's ``token_id:123`` form (``return_tokens_as_token_ids``)."""
    if not text.startswith("token_id:"):
        raise UpstreamContractError(f"expected tokens as 'token_id:N' (return_tokens_as_token_ids), got {text!r}")
    return int(text.removeprefix("token_id:"))


class OpenAIUpstream:
    """An OpenAI-compatible completions server (vLLM, SGLang, ...) as the base model."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        tokenizer_hash: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"upstream {self.url} (model {model!r})"
        self.retries = retries
        self.backoff_s = backoff_s
        self.tokenizer_hash = tokenizer_hash
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._client.close()

    # ---- proposals -----------------------------------------------------------------------------
    def body(self, request: ChunkRequest) -> dict[str, Any]:
        """The pinned request: everything q depends on is set here, nothing left to server defaults."""
        return {
            "model": self.model,
            "prompt": list(request.prompt_ids),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_k": request.top_k,
            "top_p": 1.0,
            "min_p": 0.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "repetition_penalty": 1.0,
            "seed": request.seed,
            "n": 1,
            "logprobs": request.top_k,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "ignore_eos": request.ignore_eos,
            "stream": True,
        }

    def propose(self, request: ChunkRequest, cancelled: threading.Event | None = None) -> Proposal | None:
        for attempt in range(self.retries + 1):
            try:
                return self._propose_once(request, cancelled)
            except (httpx.TransportError, _Retryable) as exc:
                if attempt == self.retries:
                    if isinstance(exc, httpx.TimeoutException):
                        raise UpstreamTimeoutError(f"{self.name} timed out ({self.retries + 1} tries)") from exc
                    raise UpstreamError(f"{self.name} failed after {self.retries + 1} tries: {exc}") from exc
                if cancelled is not None and cancelled.wait(self.backoff_s * 2**attempt):
                    return None
                if cancelled is None:
                    time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _propose_once(self, request: ChunkRequest, cancelled: threading.Event | None) -> Proposal | None:
        tokens: list[int] = []
        tops: list[dict[int, float]] = []
        finish: str | None = None
        with self._client.stream("POST", "/v1/completions", json=self.body(request)) as response:
            self._check_status(response)
            for chunk in _sse_objects(response.iter_lines()):
                if cancelled is not None and cancelled.is_set():
                    return None  # closing the stream aborts the upstream request
                choice = (chunk.get("choices") or [{}])[0]
                logprobs = choice.get("logprobs") or {}
                new = [_token_id(t) for t in logprobs.get("tokens") or []]
                top = logprobs.get("top_logprobs") or [None] * len(new)
                tokens.extend(new)
                tops.extend({_token_id(k): float(v) for k, v in (entry or {}).items()} for entry in top)
                finish = choice.get("finish_reason") or finish
        if not tokens:
            raise UpstreamContractError(f"{self.name} returned no tokens (finish_reason {finish!r})")
        ids, values = parse_top(tokens, tops, request.top_k, self.name)
        return Proposal(tuple(tokens), ids, values, finish)

    def _check_status(self, response: httpx.Response) -> None:
        if response.status_code == 429 or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            response.read()
            raise UpstreamError(f"{self.name} refused the request: HTTP {response.status_code} {response.text[:300]}")

    # ---- limits and identity -----------------------------------------------------------------
    def info(self) -> UpstreamInfo:
        try:
            response = self._client.get("/v1/models", timeout=10)
            response.raise_for_status()
            models = response.json().get("data", [])
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"{self.name} does not answer /v1/models: {exc}") from exc
        entry = next((m for m in models if m.get("id") == self.model), None)
        if entry is None:
            served = ", ".join(str(m.get("id")) for m in models) or "none"
            raise UpstreamError(f"{self.name} does not serve that model; it serves: {served}")
        length = entry.get("max_model_len")
        return UpstreamInfo(self.model, int(length) if length else None)

    def check_tokenizer(self, encode: Any) -> None:
        """Token ids of the probe texts must agree (vLLM's ``/tokenize``); a server without it is
        accepted only with a declared tokenizer hash equal to the local one (checked by the caller)."""
        for probe in TOKENIZER_PROBES:
            try:
                response = self._client.post(
                    "/tokenize", json={"model": self.model, "prompt": probe, "add_special_tokens": False}, timeout=10
                )
            except httpx.HTTPError as exc:
                raise UpstreamError(f"{self.name} does not answer /tokenize: {exc}") from exc
            if response.status_code == 404:
                raise UpstreamContractError(
                    f"{self.name} has no /tokenize endpoint to compare tokenizers with; declare the upstream's "
                    "tokenizer hash (PERSONALIZE_REMOTE_TOKENIZER_HASH) if you know it matches"
                )
            response.raise_for_status()
            theirs, ours = list(response.json().get("tokens", [])), list(encode(probe))
            if theirs != ours:
                raise UpstreamContractError(
                    f"{self.name} tokenizes {probe!r} as {theirs[:12]}..., the local backbone as {ours[:12]}...: "
                    "the heads need a backbone with the upstream model's tokenizer"
                )

    def healthy(self) -> bool:
        try:
            return self._client.get("/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class _Retryable(Exception):
    """An answer worth another try (429, 5xx)."""


def _sse_objects(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError as exc:
            raise UpstreamContractError(f"malformed server-sent event from the upstream: {data[:200]!r}") from exc
