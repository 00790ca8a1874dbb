"""Properties of the steered decoder on a tiny random model."""

from __future__ import annotations

import itertools
import json
import warnings

import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.kv_cache import BLOCK
from personalize.decoding.sampling import ValueEntries, ValueStack, guide_scores
from personalize.errors import ConfigError, ContextLengthError, HeadFormatError, RewardError, UnknownObjectiveError
from personalize.heads import load_head, new_head
from personalize.models import BaseModel
from personalize.training import TrainConfig
from tests.conftest import randomize_head

PROMPTS = ["How do I clean my keyboard?", "Explain photosynthesis.", "I love sunny days"]


def req(base: BaseModel, prompt: str, weights=None, *, beta=2.0, method="vas", temperature=1.0, seed=0, n=12, **kw):
    return GenerationRequest(
        tuple(base.encode_prompt(prompt)),
        SamplingParams(max_new_tokens=n, temperature=temperature, seed=seed, **kw),
        Personalization(weights or {}, beta=beta, method=method),
    )


@pytest.fixture()
def engine(fresh_tiny_base: BaseModel, tiny_head_dir) -> Engine:
    heads = [
        load_head(tiny_head_dir("concise", kind="lora", seed=1), fresh_tiny_base),
        load_head(tiny_head_dir("helpful", kind="lora", seed=2), fresh_tiny_base),
        load_head(tiny_head_dir("positive", kind="linear", seed=3), fresh_tiny_base),
    ]
    return Engine(fresh_tiny_base, heads)


def test_zero_weights_greedy_equals_hf_generate(engine: Engine) -> None:
    base = engine.base
    for prompt in PROMPTS:
        ids = base.encode_prompt(prompt)
        want = base.model.generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=base.pad_token_id
        )[0, len(ids) :].tolist()
        eos = set(base.eos_token_ids)
        want = [t for t in want if t not in eos][: len(want)]
        zero = {"concise": 0.0, "helpful": 0.0, "positive": 0.0}
        for method in ("vas", "base"):
            got = engine.generate([req(base, prompt, zero, temperature=0.0, method=method)])[0]
            assert list(got.token_ids) == want[: len(got.token_ids)]
            assert got.forward_rows == got.completion_tokens + (got.finish_reason == "stop")  # base row only


def test_zero_weights_scores_equal_base_logits(engine: Engine) -> None:
    base = engine.base
    request = req(base, PROMPTS[0], {"concise": 0.0, "positive": 0.0})
    ids = torch.tensor([request.prompt_ids])
    with torch.inference_mode():
        plain = base.model(ids).logits[0, -1].float()
    # The engine applies the LM head to the last position only: same numbers up to matmul rounding.
    assert torch.allclose(engine.next_token_scores([request])[0], plain, atol=1e-5, rtol=0)


def test_zero_weights_sampling_equals_base_method(engine: Engine) -> None:
    base = engine.base
    for seed in range(3):
        steered_off = engine.generate([req(base, PROMPTS[1], {"concise": 0.0}, seed=seed)])[0]
        plain = engine.generate([req(base, PROMPTS[1], method="base", seed=seed)])[0]
        assert steered_off.token_ids == plain.token_ids


def test_same_seed_same_text_and_seeds_differ(engine: Engine) -> None:
    base = engine.base
    a = engine.generate([req(base, PROMPTS[0], {"concise": 1.0}, seed=7)])[0]
    b = engine.generate([req(base, PROMPTS[0], {"concise": 1.0}, seed=7)])[0]
    assert a.token_ids == b.token_ids
    others = {engine.generate([req(base, PROMPTS[0], {"concise": 1.0}, seed=s)])[0].token_ids for s in range(4)}
    assert len(others) > 1


def _favouring_stack(base: BaseModel, hidden: torch.Tensor, target_dir: torch.Tensor) -> ValueStack:
    """A one-head stack whose direction at ``hidden`` is exactly ``target_dir``."""
    h = hidden.float()
    down = (h / h.dot(h)).reshape(1, 1, -1)  # (N=1, r=1, H): D h = 1
    up = target_dir.float().reshape(1, -1, 1)  # (N=1, H, r=1)
    return ValueStack(down, up, torch.ones(1))


def test_head_favouring_a_token_wins_as_beta_grows(tiny_base: BaseModel) -> None:
    ids = torch.tensor([tiny_base.encode_prompt(PROMPTS[0])])
    with torch.inference_mode():
        hidden = tiny_base.model.get_decoder()(ids).last_hidden_state[:, -1]  # (1, H)
        logits = tiny_base.model.get_output_embeddings()(hidden).float()  # (1, V)
    emb = tiny_base.model.get_output_embeddings().weight.detach()
    top = logits.topk(20).indices[0]
    target = int(top[7])  # a candidate the base model ranks 8th
    # Values one-hot on the target within the top-k: least-squares direction d with E[top] d = e_target.
    rhs = (top == target).float()
    d = torch.linalg.lstsq(emb[top].float(), rhs.unsqueeze(-1)).solution.squeeze(-1)
    stack = _favouring_stack(tiny_base, hidden[0], d)
    probs = []
    for beta in (0.0, 1.0, 4.0, 16.0, 64.0):
        entries = ValueEntries(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([beta]))
        scores = guide_scores(logits, hidden, emb, stack, entries, torch.tensor([20]), 20)
        probs.append(float(torch.softmax(scores, -1)[0, target]))
        # outside the top-k nothing moves
        outside = torch.ones_like(logits, dtype=torch.bool)
        outside[0, top] = False
        assert torch.equal(scores[outside], logits[outside])
    assert all(b > a for a, b in itertools.pairwise(probs)), probs
    assert probs[-1] > 0.9
    assert int(scores.argmax()) == target


def test_value_guidance_centres_over_top_k(tiny_base: BaseModel) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, tiny_base.vocab_size)
    hidden = torch.randn(3, tiny_base.hidden_size)
    emb = tiny_base.model.get_output_embeddings().weight.detach()
    stack = ValueStack(
        torch.randn(2, 4, tiny_base.hidden_size), torch.randn(2, tiny_base.hidden_size, 4), torch.ones(2)
    )
    entries = ValueEntries(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    top_k = torch.tensor([5, 20])
    scores = guide_scores(logits, hidden, emb, stack, entries, top_k, 20)
    delta = scores - logits
    for row, k in enumerate(top_k.tolist()):
        idx = logits[row].topk(k).indices
        assert abs(float(delta[row, idx].sum())) < 1e-3  # centred: values sum to zero over the row's top-k
        mask = torch.ones(logits.shape[1], dtype=torch.bool)
        mask[idx] = False
        assert torch.count_nonzero(delta[row, mask]) == 0  # untouched outside the top-k


def test_batch_with_different_weights_equals_one_by_one(engine: Engine) -> None:
    base = engine.base
    requests = [
        req(base, PROMPTS[0], {"concise": 1.0, "helpful": -0.5}, seed=1),
        req(base, PROMPTS[1], {"positive": 2.0}, seed=2, temperature=0.0),
        req(base, PROMPTS[2], {}, seed=3, n=5),
        req(base, PROMPTS[2], {"helpful": 1.5, "positive": 0.5}, seed=4, top_p=0.9),
    ]
    batched = engine.generate(requests)
    for request, together in zip(requests, batched, strict=True):
        alone = engine.generate([request])[0]
        assert together.token_ids == alone.token_ids
        assert together.text == alone.text
        assert together.forward_rows == alone.forward_rows
    # the first-step scores agree numerically too
    together_scores = engine.next_token_scores(requests)
    for i, request in enumerate(requests):
        assert torch.allclose(together_scores[i], engine.next_token_scores([request])[0], atol=1e-4)


def test_cached_decoding_equals_recomputation(engine: Engine) -> None:
    base = engine.base
    request = req(base, PROMPTS[0], {"concise": 1.0, "helpful": 0.7, "positive": -1.0}, n=10)
    events = [e for e in engine.stream([request])]
    tokens = [e.token_id for e in events]
    for t, event in enumerate(events):
        prefix = GenerationRequest(request.prompt_ids + tuple(tokens[:t]), request.sampling, request.personalization)
        scores = engine.next_token_scores([prefix])[0]
        recomputed = float(torch.log_softmax(scores, -1)[event.token_id])
        assert event.logprob is not None
        assert abs(recomputed - event.logprob) < 1e-4, (t, recomputed, event.logprob)


def test_unused_heads_are_not_computed(engine: Engine) -> None:
    base = engine.base
    one_lora = engine.generate([req(base, PROMPTS[0], {"concise": 1.0}, n=6)])[0]
    assert one_lora.forward_rows == 2 * one_lora.completion_tokens or one_lora.finish_reason == "stop"
    linear_only = engine.generate([req(base, PROMPTS[0], {"positive": 1.0}, n=6)])[0]
    assert linear_only.processed_tokens == linear_only.prompt_tokens + linear_only.forward_rows  # one row
    both = engine.generate([req(base, PROMPTS[0], {"concise": 1.0, "helpful": 1.0, "positive": 1.0}, n=6)])[0]
    assert both.head_versions == {"concise": "1", "helpful": "1", "positive": "1"}
    assert both.processed_tokens == 3 * (both.prompt_tokens + both.forward_rows // 3)


def test_streaming_concatenates_to_text_and_stops(engine: Engine) -> None:
    base = engine.base
    request = req(base, PROMPTS[0], {"concise": 1.0}, n=20)
    events = list(engine.stream([request]))
    full = engine.generate([request])[0]
    assert "".join(e.text for e in events) == full.text
    assert events[-1].finish_reason == full.finish_reason
    assert all(e.finish_reason is None for e in events[:-1])
    if len(full.text) > 3:
        stop = full.text[2:4]
        stopped = engine.generate([req(base, PROMPTS[0], {"concise": 1.0}, n=20, stop=(stop,))])[0]
        assert stopped.finish_reason == "stop"
        assert stop not in stopped.text
        assert full.text.startswith(stopped.text)


def test_best_of_n_returns_highest_reward(engine: Engine) -> None:
    base = engine.base

    def longest(prompts, responses):
        return torch.tensor([float(len(r)) for r in responses])

    request = req(base, PROMPTS[0], method="bon", n=8, seed=5)
    request = GenerationRequest(request.prompt_ids, request.sampling, Personalization({}, method="bon", best_of=6))
    [result] = engine.generate([request], reward=longest)
    from personalize.decoding.rng import derive_seed

    samples = [
        engine.generate([req(base, PROMPTS[0], method="base", n=8, seed=derive_seed(5, i))])[0].text for i in range(6)
    ]
    assert result.reward == max(len(s) for s in samples)
    assert result.text in samples and len(result.text) == max(len(s) for s in samples)
    assert result.forward_rows >= 6  # N samples were paid for
    with pytest.raises(RewardError):
        engine.generate([request])  # no weights and no reward: nothing to rank by


def test_best_of_n_ranks_by_the_reward_the_head_names(fresh_tiny_base: BaseModel) -> None:
    """An objective whose head.json names another reward is ranked by that reward, not by its own name."""
    from personalize.decoding.rng import derive_seed
    from personalize.rewards import register_reward, unregister_reward

    base = fresh_tiny_base
    register_reward("test-fewest-chars", lambda p, r: [-float(len(x)) for x in r])
    try:
        engine = Engine(base, [new_head(base, "brevity", kind="linear", reward="test-fewest-chars")])
        assert engine.reward_names() == {"brevity": "test-fewest-chars"}
        request = req(base, PROMPTS[0], method="base", n=10, seed=3)
        request = GenerationRequest(
            request.prompt_ids, request.sampling, Personalization({"brevity": 1.0}, method="bon", best_of=6)
        )
        [result] = engine.generate([request])  # no reward named "brevity" exists: the head's reward ranks
        samples = [
            engine.generate([req(base, PROMPTS[0], method="base", n=10, seed=derive_seed(3, i))])[0].text
            for i in range(6)
        ]
        shortest = min(len(s) for s in samples)
        assert len({len(s) for s in samples}) > 1  # the ranking has something to choose
        assert len(result.text) == shortest and result.reward == -shortest
    finally:
        unregister_reward("test-fewest-chars")


def test_errors_are_clear(engine: Engine) -> None:
    base = engine.base
    with pytest.raises(UnknownObjectiveError, match="valid objectives: concise, helpful, positive"):
        engine.generate([req(base, PROMPTS[0], {"consise": 1.0})])
    with pytest.raises(ContextLengthError, match="exceeds the model's context"):
        engine.generate([req(base, PROMPTS[0], n=600)])
    with pytest.raises(ConfigError, match="beta"):
        Personalization({"concise": 1.0}, beta=float("nan"))
    with pytest.raises(ConfigError, match="weights"):
        Personalization({"concise": float("inf")})
    with pytest.raises(ConfigError, match="method"):
        Personalization(method="ppo")


def test_add_and_remove_heads_between_batches(fresh_tiny_base: BaseModel, tiny_head_dir) -> None:
    engine = Engine(fresh_tiny_base)
    request = req(fresh_tiny_base, PROMPTS[0], {"concise": 1.0}, beta=8.0, seed=3)
    with pytest.raises(UnknownObjectiveError):
        engine.generate([request])
    engine.add_head(load_head(tiny_head_dir("concise", seed=9), fresh_tiny_base))
    steered = engine.generate([request])[0]
    engine.remove_head("concise")
    plain = engine.generate([req(fresh_tiny_base, PROMPTS[0], {}, seed=3)])[0]
    assert steered.token_ids != plain.token_ids
    assert engine.objectives == {}


def test_neutral_new_head_does_not_steer(fresh_tiny_base: BaseModel) -> None:
    head = new_head(fresh_tiny_base, "concise")  # zero-initialised output and LoRA B
    engine = Engine(fresh_tiny_base, [head])
    a = engine.generate([req(fresh_tiny_base, PROMPTS[0], {"concise": 3.0}, seed=11)])[0]
    b = engine.generate([req(fresh_tiny_base, PROMPTS[0], {}, seed=11)])[0]
    assert a.token_ids == b.token_ids
    _ = randomize_head


def test_shared_lower_layers_equal_every_row_every_layer(tiny_base: BaseModel) -> None:
    """Heads adapting only the top layer: sharing the bottom layer per sequence changes no number."""
    from tests.tiny import build_tiny_base

    def top_only(name: str, seed: int):
        head = randomize_head(new_head(tiny_base, name), seed)
        assert head.adapter is not None
        head.adapter = {k: v for k, v in head.adapter.items() if ".layers.0." not in k}
        return head

    heads = [top_only("concise", 1), top_only("helpful", 2)]
    shared = Engine(build_tiny_base(), heads)
    full = Engine(build_tiny_base(), heads, share_layers=False)
    assert shared.heads.split == 1 and full.heads.split == 0
    requests = [
        req(tiny_base, PROMPTS[0], {"concise": 1.0, "helpful": 1.0}, seed=1, n=9),
        req(tiny_base, PROMPTS[1], {}, seed=2, n=3),  # finishes early: pruned mid-batch
        req(tiny_base, PROMPTS[2], {"helpful": 2.0}, seed=3, n=6),
    ]
    for a, b in zip(shared.generate(requests), full.generate(requests), strict=True):
        assert a.token_ids == b.token_ids and a.forward_rows == b.forward_rows
    assert torch.allclose(shared.next_token_scores(requests), full.next_token_scores(requests), atol=1e-5)
    # and a head that adapts layer 0 turns sharing off
    shared.add_head(randomize_head(new_head(shared.base, "positive"), 3))
    assert shared.heads.split == 0


def test_decoding_raises_no_future_warning(tiny_base: BaseModel) -> None:
    """Both the shared-layer path and every row through every layer, with FutureWarnings as errors."""
    from tests.tiny import build_tiny_base

    head = randomize_head(new_head(tiny_base, "concise"), 1)
    for share in (True, False):
        engine = Engine(build_tiny_base(), [head], share_layers=share)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            engine.generate([req(engine.base, PROMPTS[0], {"concise": 1.0}, n=4)])


def test_two_engines_on_one_model_keep_their_own_heads(fresh_tiny_base: BaseModel, tiny_head_dir) -> None:
    first = Engine(fresh_tiny_base, [load_head(tiny_head_dir("concise", seed=1), fresh_tiny_base)])
    request = req(fresh_tiny_base, PROMPTS[0], {"concise": 1.0}, beta=6.0, seed=2)
    before = first.generate([request])[0].token_ids
    second = Engine(fresh_tiny_base, [load_head(tiny_head_dir("concise", seed=5, version="2"), fresh_tiny_base)])
    assert first.generate([request])[0].token_ids == before
    assert second.generate([request])[0].token_ids != before


def _drain(batch, collected: dict[int, list[int]]) -> None:
    for event in batch.emit():
        collected.setdefault(event.index, []).append(event.token_id)
    batch.advance()


def test_requests_joining_a_running_batch_decode_as_if_alone(engine: Engine) -> None:
    base = engine.base
    first = req(base, PROMPTS[1], {"concise": 1.0}, seed=1, n=10)
    late_long = req(base, PROMPTS[0] + " Please answer in detail, thanks.", {"helpful": 1.0}, seed=2, n=6)
    late_short = req(base, "Hi", {"positive": 1.0, "concise": 0.5}, seed=3, n=7, top_p=0.8)
    batch = engine.open_batch()
    got: dict[int, list[int]] = {}
    batch.add([first])
    for _ in range(3):
        _drain(batch, got)
    batch.add([late_long])  # longer history than the running sequence: the old cache is left-padded
    _drain(batch, got)
    batch.add([late_short])
    while not batch.done:
        _drain(batch, got)
    results = batch.results()
    for index, request in enumerate([first, late_long, late_short]):
        alone = engine.generate([request])[0]
        assert results[index].token_ids == alone.token_ids, index
        assert got[index][: len(alone.token_ids)] == list(alone.token_ids)


def test_cancelled_request_leaves_and_others_continue(engine: Engine) -> None:
    base = engine.base
    keep = req(base, PROMPTS[0], {"concise": 1.0}, seed=4, n=8, ignore_eos=True)
    leave = req(base, PROMPTS[1], {"helpful": 1.0}, seed=5, n=8, ignore_eos=True)
    batch = engine.open_batch()
    got: dict[int, list[int]] = {}
    batch.add([keep, leave])
    _drain(batch, got)
    batch.cancel(1)
    while not batch.done:
        _drain(batch, got)
    assert len(got[1]) == 1 and len(got[0]) == 8
    assert tuple(got[0]) == engine.generate([keep])[0].token_ids
    with pytest.raises(UnknownObjectiveError):
        batch.add([req(base, PROMPTS[0], {"nope": 1.0})])


def test_events_carry_each_objectives_push_on_the_token(engine: Engine) -> None:
    base = engine.base
    request = req(base, PROMPTS[0], {"concise": 1.0, "positive": -2.0}, n=5, top_k=0)
    events = list(engine.stream([request]))
    assert all(set(e.contributions) == {"concise", "positive"} for e in events)
    first = events[0]
    guided = engine.next_token_scores([request])[0]
    plain = engine.next_token_scores([req(base, PROMPTS[0], method="base")])[0]
    delta = float(guided[first.token_id] - plain[first.token_id])
    assert abs(sum(first.contributions.values()) - delta) < 1e-4
    assert any(abs(v) > 1e-6 for e in events for v in e.contributions.values())
    assert all(e.contributions == {} for e in engine.stream([req(base, PROMPTS[0], {"concise": 0.0}, n=3)]))


def test_stopping_head_pushes_end_tokens_by_their_value_over_going_on(tiny_base: BaseModel) -> None:
    torch.manual_seed(1)
    V, H = tiny_base.vocab_size, tiny_base.hidden_size
    end = torch.tensor([3, 7])
    logits = torch.randn(2, V)
    logits[0, 3] = 10.0  # an end token in row 0's top-5; row 1's top-5 holds none
    logits[1, end] = -10.0
    hidden = torch.randn(2, H)
    emb = tiny_base.model.get_output_embeddings().weight.detach()
    down, up = torch.randn(1, 4, H), torch.randn(1, H, 4)
    inv_scale = torch.tensor([0.5])
    entries = ValueEntries(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([2.0, 2.0]))
    top_k = torch.tensor([5, 5])
    stopping = ValueStack(down, up, inv_scale, end_only=torch.ones(1), end_ids=end)
    delta = guide_scores(logits, hidden, emb, stopping, entries, top_k, 5) - logits
    # by hand: Q(s, a) = E[a] . U D h over row 0's top-5; going on = base-probability-weighted mean of the others
    top = logits[0].topk(5)
    values = emb[top.indices].float() @ (up[0] @ (down[0] @ hidden[0]))  # (5,)
    others = top.indices != 3
    weights = torch.softmax(top.values[others], -1)
    expected = (values[~others][0] - (weights * values[others]).sum()) * 2.0 * 0.5
    assert torch.isclose(delta[0, 3], expected, atol=1e-4)
    assert torch.count_nonzero(delta[0, torch.arange(V) != 3]) == 0  # what the answer says is the base model's
    assert torch.count_nonzero(delta[1]) == 0  # no end token among the candidates: nothing to decide
    # the same values steering every candidate move the others too
    plain = ValueStack(down, up, inv_scale, end_only=torch.zeros(1), end_ids=end)
    assert torch.count_nonzero(guide_scores(logits, hidden, emb, plain, entries, top_k, 5)[0] - logits[0]) == 5


def test_stopping_head_only_moves_where_the_answer_ends(fresh_tiny_base: BaseModel, tiny_head_dir) -> None:
    base = fresh_tiny_base
    folder = tiny_head_dir("concise", seed=1)
    meta = json.loads((folder / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps({**meta, "steer": "end"}))
    stopper = load_head(folder, base)
    assert stopper.meta.steer == "end"
    engine = Engine(base, [stopper])

    def request(weights: dict[str, float]) -> GenerationRequest:
        return GenerationRequest(
            tuple(base.encode_prompt(PROMPTS[0])),
            SamplingParams(max_new_tokens=40, temperature=0.0),
            Personalization(weights, beta=50.0, top_k=200),
        )

    steer = request({"concise": -1.0})
    moved = torch.nonzero(engine.next_token_scores([steer])[0] != engine.next_token_scores([request({})])[0])
    assert moved.numel() and set(moved.flatten().tolist()) <= set(base.eos_token_ids)
    # greedy: every token but the end decision is the base model's; this head ends the answer early
    steered = engine.generate([steer])[0].token_ids
    unsteered = engine.generate([request({})])[0].token_ids
    assert 0 < len(steered) < len(unsteered) and unsteered[: len(steered)] == steered
    # the same head steering every candidate writes something else
    everything = Engine(base, [load_head(tiny_head_dir("concise", seed=1), base)])
    assert everything.generate([steer])[0].token_ids[: len(steered)] != steered


def test_steer_mode_is_checked_and_older_heads_steer_everything(tiny_base: BaseModel, tiny_head_dir) -> None:
    folder = tiny_head_dir("concise", seed=1)
    meta = json.loads((folder / "head.json").read_text())
    assert meta["steer"] == "all"
    del meta["steer"]  # a head written before the mode existed
    (folder / "head.json").write_text(json.dumps(meta))
    assert load_head(folder, tiny_base).meta.steer == "all"
    (folder / "head.json").write_text(json.dumps({**meta, "steer": "stop"}))
    with pytest.raises(HeadFormatError, match="steer must be one of all, end, got 'stop'"):
        load_head(folder, tiny_base)
    with pytest.raises(ConfigError, match="steer must be one of all, end"):
        TrainConfig(steer="stop")


def test_a_long_running_batch_keeps_its_cache_to_the_live_sequences(engine: Engine) -> None:
    """Requests keep joining and leaving for a thousand steps: the cache never allocates more positions
    per row than the longest live sequence (prompt + tokens fed) plus its block slack, and each seeded
    request decodes as alone."""
    base = engine.base
    rng = torch.Generator().manual_seed(0)
    words = ["keyboard", "clean", "sunny", "photosynthesis", "explain", "answer", "detail", "please", "why", "how"]
    weights = [{}, {"concise": 1.0}, {"helpful": 0.5, "positive": 1.0}, {"positive": -1.0}]
    requests = []
    for i in range(300):
        prompt = " ".join(
            words[int(j)]
            for j in torch.randint(len(words), (int(torch.randint(1, 12, (1,), generator=rng)),), generator=rng)
        )
        n = int(torch.randint(2, 14, (1,), generator=rng))
        requests.append(req(base, prompt, weights[i % 4], method="vas" if i % 4 else "base", seed=i, n=n))
    batch = engine.open_batch()
    got: dict[int, list[int]] = {}
    lengths: dict[int, int] = {}  # request index -> prompt + emitted tokens, while live
    waiting, steps, worst = list(requests), 0, 0
    while waiting or not batch.done:
        if waiting and int(torch.randint(4, (1,), generator=rng)) == 0:
            for index in batch.add([waiting.pop(0)]):
                lengths[index] = len(batch.requests[index].prompt_ids)
        for event in batch.emit():
            got.setdefault(event.index, []).append(event.token_id)
            lengths[event.index] += 1
            if event.finish_reason is not None:
                del lengths[event.index]
        if lengths:
            worst = max(worst, batch.cache_length - max(lengths.values()))
        batch.advance()
        steps += 1
    assert steps >= 1000
    slack = 2 * BLOCK - 1  # allocation in blocks, trimmed once two blocks are free
    assert worst <= slack, f"the cache held {worst} positions more than the longest live sequence"
    results = batch.results()
    for index in range(0, len(requests), 7):
        assert results[index].token_ids == engine.generate([requests[index]])[0].token_ids, index


def test_bf16_stays_close_to_float32_and_repeats_itself(fresh_tiny_base: BaseModel, tiny_head_dir) -> None:
    """What the seeded promise means in bf16: a request decodes the same text whenever it runs the same
    way (alone, or in the same batch), and its scores stay within a stated tolerance of float32 and of
    its scores in another batch. Token-for-token equality between alone and batched holds in float32
    only: bf16 rounds sums that run in a different order at another batch size."""
    base = fresh_tiny_base
    heads = [
        load_head(tiny_head_dir("concise", kind="lora", seed=1), base),
        load_head(tiny_head_dir("positive", kind="linear", seed=3), base),
    ]
    f32, b16 = Engine(base, heads, dtype="float32"), Engine(base, heads, dtype="bfloat16")
    assert b16.dtype == torch.bfloat16 and f32.dtype == torch.float32
    requests = [
        req(base, PROMPTS[i % 3], [{}, {"concise": 1.0}, {"concise": 0.5, "positive": 1.0}][i % 3], seed=i, n=16)
        for i in range(6)
    ]
    wide, narrow = torch.log_softmax(b16.next_token_scores(requests), -1), f32.next_token_scores(requests)
    assert (wide - torch.log_softmax(narrow, -1)).abs().max() < 0.1  # nats, first token, every vocabulary entry
    alone = torch.cat([b16.next_token_scores([r]) for r in requests])
    assert torch.allclose(b16.next_token_scores(requests), alone, atol=1e-4)
    assert [r.token_ids for r in b16.generate(requests)] == [r.token_ids for r in b16.generate(requests)]
    assert b16.generate(requests[1:2])[0].token_ids == b16.generate(requests[1:2])[0].token_ids


def test_logit_bias_moves_base_logits_before_the_top_k(engine: Engine) -> None:
    base = engine.base
    plain = engine.next_token_scores([req(base, PROMPTS[0], method="base")])[0]
    outside = int(plain.argsort()[len(plain) // 2])  # far below the top-k
    biased = engine.next_token_scores([req(base, PROMPTS[0], method="base", logit_bias={outside: 50.0})])[0]
    assert torch.allclose(biased[outside], plain[outside] + 50.0) and int(biased.argmax()) == outside
    others = torch.ones_like(plain, dtype=torch.bool)
    others[outside] = False
    assert torch.equal(biased[others], plain[others])
    steered = req(base, PROMPTS[0], {"concise": 1.0}, logit_bias={outside: 50.0}, temperature=0.0)
    assert engine.generate([steered])[0].token_ids[0] == outside  # in the top-k now, and far ahead
    with pytest.raises(ConfigError, match="logit_bias"):
        engine.validate(req(base, PROMPTS[0], logit_bias={base.vocab_size: 1.0}))
    with pytest.raises(ConfigError, match="logit_bias"):
        req(base, PROMPTS[0], logit_bias={3: 101.0})


def test_top_logprobs_are_the_sampled_distributions_best(engine: Engine) -> None:
    base = engine.base
    request = req(base, PROMPTS[0], {"concise": 1.0}, n=5, top_logprobs=4, temperature=0.7)
    result = engine.generate([request])[0]
    first = torch.log_softmax(engine.next_token_scores([request])[0] / 0.7, -1)
    values, ids = first.topk(4)
    assert [t for t, _ in result.top_logprobs[0]] == ids.tolist()
    assert torch.allclose(torch.tensor([v for _, v in result.top_logprobs[0]]), values, atol=1e-4)
    assert abs(result.logprobs[0] - float(first[result.token_ids[0]])) < 1e-4
