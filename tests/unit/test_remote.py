"""Remote base models: the speculative sampler is exact, the upstream's contract is checked, failures are the
request's own. The upstream is an in-process one built from a real tiny model (tests/remote_fake.py)."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

import httpx
import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.errors import ConfigError, ContextLengthError, UpstreamContractError, UpstreamError
from personalize.heads import new_head
from personalize.models import BaseModel
from personalize.remote.engine import RemoteEngine
from personalize.remote.speculative import chunk_length, first_rejections, verify
from personalize.remote.upstream import ChunkRequest, OpenAIUpstream, parse_top
from tests.conftest import randomize_head
from tests.remote_fake import ModelUpstream
from tests.tiny import build_tiny_base

PROMPT = "How do I clean my keyboard?"


@pytest.fixture(scope="module")
def engines() -> tuple[Engine, RemoteEngine]:
    base = build_tiny_base()
    heads = [randomize_head(new_head(base, "concise"), 1), randomize_head(new_head(base, "positive", kind="linear"), 3)]
    local = Engine(base, heads)
    return local, RemoteEngine(local, ModelUpstream(build_tiny_base()))


def request(base: BaseModel, prompt_ids: tuple[int, ...], *, seed: int, n: int, **personalization) -> GenerationRequest:
    temperature = personalization.pop("temperature", 1.0)
    return GenerationRequest(
        prompt_ids,
        SamplingParams(max_new_tokens=n, seed=seed, temperature=temperature),
        Personalization(**personalization),
    )


def target(local: Engine, prompt_ids: tuple[int, ...], temperature: float, **personalization) -> torch.Tensor:
    """The VAS target over the base top-k at the next position: p (V,), exact."""
    scores = local.next_token_scores(
        [request(local.base, prompt_ids, seed=0, n=2, within_top_k=True, **personalization)]
    )
    return torch.softmax(scores[0] / temperature, -1)


def tv(empirical: Counter[int], exact: torch.Tensor) -> float:
    n = sum(empirical.values())
    support = set(empirical) | set(torch.nonzero(exact > 1e-9).flatten().tolist())
    return 0.5 * sum(abs(empirical[t] / n - float(exact[t])) for t in support)


@pytest.mark.parametrize(("beta", "chunk", "temperature"), [(2.0, 1, 1.0), (2.0, 4, 1.0), (4.0, 8, 0.7), (1.0, 3, 1.3)])
def test_speculative_sampling_draws_from_the_vas_target(engines, beta: float, chunk: int, temperature: float) -> None:
    """Thousands of two-token answers: the first and the second token's distributions equal the exact VAS
    target (within sampling error), while the upstream's own q is far from it (so the test can fail)."""
    local, remote = engines
    base = local.base
    prompt = tuple(base.encode_prompt(PROMPT))
    steer = {"weights": {"concise": 1.0, "positive": 1.0}, "beta": beta}
    draws = 2000
    results = remote.generate(
        [request(base, prompt, seed=i, n=2, chunk_tokens=chunk, temperature=temperature, **steer) for i in range(draws)]
    )
    first = Counter(r.token_ids[0] for r in results)
    second = Counter(r.token_ids[1] for r in results if len(r.token_ids) > 1)
    p1 = target(local, prompt, temperature, **steer)
    q1 = target(local, prompt, temperature, weights={}, beta=beta)
    p2 = sum(float(p1[x]) * target(local, (*prompt, x), temperature, **steer) for x in first)  # marginal, T_1 only
    noise = 3 * 0.5 * sum(math.sqrt(float(p) * (1 - float(p)) / draws) for p in p1 if p > 1e-9)  # ~3 sd of TV
    assert 0.5 * float((p1 - q1).abs().sum()) > 2 * noise  # steering moves the distribution well beyond the noise
    assert tv(first, p1) < noise
    assert tv(second, p2 / p2.sum()) < 1.5 * noise  # the marginal leaves out first tokens never drawn


def test_one_token_chunks_match_the_local_engine_within_the_top_k(engines) -> None:
    local, remote = engines
    base = local.base
    prompt = tuple(base.encode_prompt(PROMPT))
    steer = {"weights": {"concise": 1.0}, "beta": 3.0}
    draws = 2000
    remote_first = Counter(
        r.token_ids[0]
        for r in remote.generate([request(base, prompt, seed=i, n=1, chunk_tokens=1, **steer) for i in range(draws)])
    )
    local_first = Counter(
        r.token_ids[0]
        for r in local.generate([request(base, prompt, seed=i, n=1, within_top_k=True, **steer) for i in range(draws)])
    )
    p = target(local, prompt, 1.0, **steer)
    noise = 3 * 0.5 * sum(math.sqrt(float(x) * (1 - float(x)) / draws) for x in p if x > 1e-9)
    assert tv(local_first, p) < noise and tv(remote_first, p) < noise
    keys = set(remote_first) | set(local_first)
    assert 0.5 * sum(abs(remote_first[k] - local_first[k]) / draws for k in keys) < 2 * noise


def test_greedy_remote_equals_greedy_local_within_the_top_k(engines) -> None:
    local, remote = engines
    base = local.base
    prompt = tuple(base.encode_prompt(PROMPT))
    for chunk in (1, 3, 8):
        steer = {"weights": {"concise": 2.0, "positive": -1.0}, "beta": 2.0, "temperature": 0.0}
        got = remote.generate([request(base, prompt, seed=0, n=10, chunk_tokens=chunk, **steer)])[0]
        want = local.generate([request(base, prompt, seed=0, n=10, within_top_k=True, **steer)])[0]
        assert got.token_ids == want.token_ids, chunk


def test_steered_requests_that_end_first_leave_the_others_decoding_as_alone(engines) -> None:
    """Three steered sequences; the first ends at once, the other two grow their caches past a block and
    one of them ends before the other: freed slots are filled by moving live ones (in-place writes to
    the cache's tensors), and each answer equals the answer it gets alone."""
    local, remote = engines
    base = local.base
    prompt = tuple(base.encode_prompt(PROMPT))
    steer = {"weights": {"concise": 1.0}, "beta": 2.0, "temperature": 0.0, "chunk_tokens": 3}
    requests = [request(base, prompt, seed=i, n=n, **steer) for i, n in enumerate((3, 100, 90))]  # past a block
    together = remote.generate(requests)
    for one, alone in zip(together, (remote.generate([r])[0] for r in requests), strict=True):
        assert one.token_ids == alone.token_ids


def test_unsteered_requests_pass_the_upstream_tokens_through(engines) -> None:
    local, remote = engines
    prompt = tuple(local.base.encode_prompt(PROMPT))
    upstream = remote.upstream
    assert isinstance(upstream, ModelUpstream)
    before = upstream.calls
    result = remote.generate([request(local.base, prompt, seed=3, n=12, method="base")])[0]
    assert upstream.calls - before == 1  # one call for the whole answer: nothing to verify
    assert result.compute.upstream_tokens == result.compute.accepted_tokens == result.completion_tokens
    assert result.compute.processed_tokens == 0  # the local backbone did nothing


def test_compute_counts_calls_and_acceptance(engines) -> None:
    local, remote = engines
    prompt = tuple(local.base.encode_prompt(PROMPT))
    result = remote.generate([request(local.base, prompt, seed=1, n=16, weights={"concise": 1.0}, chunk_tokens=4)])[0]
    c = result.compute
    assert c.upstream_calls >= math.ceil(result.completion_tokens / 4)
    assert c.accepted_tokens <= c.upstream_tokens <= 4 * c.upstream_calls
    assert c.accepted_tokens + c.upstream_calls >= result.completion_tokens  # each call adds its accepted + 1
    assert c.forwards >= 1 and c.processed_tokens > 0


def test_methods_a_remote_model_cannot_run_are_refused(engines) -> None:
    local, remote = engines
    prompt = tuple(local.base.encode_prompt(PROMPT))
    for method, why in (("ivg", "chunk-level search"), ("aisp", "pre-logit")):
        with pytest.raises(ConfigError, match=why):
            remote.validate(request(local.base, prompt, seed=0, n=4, weights={"concise": 1.0}, method=method))
    short = RemoteEngine(local, ModelUpstream(local.base, context_length=30))
    with pytest.raises(ContextLengthError, match="30 tokens"):
        short.validate(request(local.base, prompt, seed=0, n=16))


def test_an_upstream_sampling_outside_its_top_k_is_caught(engines) -> None:
    local, _ = engines
    remote = RemoteEngine(local, ModelUpstream(build_tiny_base(), outside_top_k=True))
    prompt = tuple(local.base.encode_prompt(PROMPT))
    with pytest.raises(UpstreamContractError):
        parse_top([5], [{1: -0.1, 2: -0.2}], 2, "upstream")
    failing = RemoteEngine(local, ModelUpstream(build_tiny_base(), fail_after=0))
    with pytest.raises(UpstreamError, match="is down"):
        failing.generate([request(local.base, prompt, seed=0, n=4, weights={"concise": 1.0})])
    # in a batch, a failing request fails alone: the others finish
    flaky = ModelUpstream(build_tiny_base(), fail_after=1)
    batch = RemoteEngine(local, flaky).open_batch()
    batch.add([request(local.base, prompt, seed=s, n=3, method="base") for s in range(2)])
    errors, finished = [], []
    while not batch.done:
        for event in batch.emit():
            (errors if event.error is not None else finished).append(event)
        batch.advance()
    assert len(errors) == 1 and any(e.finish_reason for e in finished)
    del remote


def test_a_different_tokenizer_is_refused() -> None:
    from tests.tiny import build_tiny_tokenizer

    base = build_tiny_base()
    other = build_tiny_base()
    object.__setattr__(other, "tokenizer", build_tiny_tokenizer(vocab_size=300))
    with pytest.raises(UpstreamContractError, match="tokenizes"):
        RemoteEngine(Engine(base), ModelUpstream(other))
    with pytest.raises(UpstreamContractError, match="tokenizer hash"):
        RemoteEngine(Engine(base), ModelUpstream(base), tokenizer_hash="0" * 64)


def test_verify_by_hand() -> None:
    ids = torch.tensor([[7, 8, 9], [7, 8, 9], [7, 8, 9]])
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 3))
    bonus = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(3.0), 0.0], [0.0, 0.0, 0.0]])
    proposed = torch.tensor([7, 7, 8])
    temperature = torch.tensor([1.0, 1.0, 0.0])
    v = verify(ids, logprobs, proposed, bonus, temperature, torch.tensor([0.99, 0.6, 0.0]), torch.tensor([0.5] * 3))
    # p == q: always accepted; row 1: p(7) = 0.5/1.6 < q(7) = 0.5: accepted iff u < 0.625; greedy row: argmax 7 != 8
    assert v.accept.tolist() == [True, True, False]
    assert int(v.replacement[1]) == 8  # the residual puts all its mass on 8 (the only token p raised)
    assert int(v.replacement[2]) == 7
    assert abs(float(v.overlap[1]) - (0.5 / 1.6 + 0.3 + 0.2 / 1.6)) < 1e-6
    assert first_rejections([True, True, False, True, False], [3, 2]) == [2, 1]
    assert [chunk_length(a) for a in (0.5, 0.79, 0.9, 0.99, 0.0)] == [3, 7, 16, 16, 2]


def test_openai_upstream_pins_q_and_parses_vllm_answers() -> None:
    seen: list[dict] = []
    answers = [503, "ok"]

    def handler(http: httpx.Request) -> httpx.Response:
        seen.append(json.loads(http.content))
        answer = answers.pop(0) if answers else "ok"
        if answer == 503:
            return httpx.Response(503, text="busy")
        lines = []
        for token, top in (
            (5, {"token_id:5": -0.5, "token_id:6": -1.5}),
            (6, {"token_id:6": -0.2, "token_id:5": -2.0}),
        ):
            chunk = {
                "choices": [
                    {
                        "text": "",
                        "logprobs": {"tokens": [f"token_id:{token}"], "top_logprobs": [top]},
                        "finish_reason": None,
                    }
                ]
            }
            lines.append(f"data: {json.dumps(chunk)}\n\n")
        lines.append("data: [DONE]\n\n")
        return httpx.Response(200, text="".join(lines), headers={"content-type": "text/event-stream"})

    upstream = OpenAIUpstream("http://upstream", "m", backoff_s=0.0, transport=httpx.MockTransport(handler))
    proposal = upstream.propose(ChunkRequest((1, 2, 3), 2, temperature=0.8, seed=11, top_k=2), threading.Event())
    assert proposal is not None and proposal.tokens == (5, 6)
    assert proposal.top_ids.tolist() == [[5, 6], [6, 5]]
    body = seen[-1]
    pinned = {"temperature": 0.8, "top_k": 2, "top_p": 1.0, "min_p": 0.0, "presence_penalty": 0.0, "seed": 11}
    assert {k: body[k] for k in pinned} == pinned and body["prompt"] == [1, 2, 3] and len(seen) == 2  # one retry
    assert body["frequency_penalty"] == 0.0 and body["repetition_penalty"] == 1.0 and body["logprobs"] == 2
    refusing = OpenAIUpstream(
        "http://upstream", "m", transport=httpx.MockTransport(lambda _: httpx.Response(400, text="too long"))
    )
    with pytest.raises(UpstreamError, match="too long"):
        refusing.propose(ChunkRequest((1,), 2, temperature=1.0, seed=0))


def test_a_client_that_leaves_aborts_its_upstream_call(engines) -> None:
    local, _ = engines
    upstream = ModelUpstream(build_tiny_base())
    upstream.hold = threading.Event()
    batch = RemoteEngine(local, upstream).open_batch()
    prompt = tuple(local.base.encode_prompt(PROMPT))
    batch.add([request(local.base, prompt, seed=0, n=8, weights={"concise": 1.0})])
    batch.advance()  # the call is in flight, held by the upstream
    batch.cancel(0)
    batch.emit()  # the request leaves: its call is told so
    deadline = threading.Event()
    for _ in range(200):
        if upstream.cancelled_calls:
            break
        deadline.wait(0.01)
    assert upstream.cancelled_calls == 1 and batch.done


def test_remote_answers_report_log_probabilities_and_refuse_a_logit_bias(engines) -> None:
    local, remote = engines
    prompt = tuple(local.base.encode_prompt(PROMPT))
    sampling = SamplingParams(max_new_tokens=6, seed=4, top_logprobs=3)
    for weights in ({}, {"concise": 1.0}):
        result = remote.generate([GenerationRequest(prompt, sampling, Personalization(weights, chunk_tokens=3))])[0]
        assert len(result.top_logprobs) == len(result.logprobs) >= result.completion_tokens
        for logprob, top in zip(result.logprobs, result.top_logprobs, strict=True):
            assert len(top) == 3 and top[0][1] >= top[-1][1] and logprob <= top[0][1] + 1e-6
    biased = GenerationRequest(prompt, SamplingParams(max_new_tokens=4, logit_bias={5: 1.0}), Personalization())
    with pytest.raises(ConfigError, match="logit_bias"):
        remote.validate(biased)
