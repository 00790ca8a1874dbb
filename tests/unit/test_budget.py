"""Budget-aware value heads: the remaining-token features in the head file, the decoder and training."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.sampling import ValueEntries, taken_values
from personalize.errors import ConfigError, HeadFormatError
from personalize.heads import HEAD_JSON, ValueHead, load_head, new_head, save_head
from personalize.models import BaseModel
from personalize.training import RolloutConfig, TrainConfig, sample_rollouts, train_head
from personalize.training.shaping import sparse_rewards
from personalize.training.td import _collate
from tests.conftest import randomize_head

PROMPT = "How do I clean my keyboard?"
SCALES = (1.0, 4.0)


def _budget_head(base: BaseModel, kind: str = "linear", seed: int = 5) -> ValueHead:
    head = new_head(base, "helpful", kind=kind, budget_scales=SCALES)  # type: ignore[arg-type]
    return randomize_head(head, seed)


def _request(base: BaseModel, prompt_ids: tuple[int, ...], max_new_tokens: int, beta: float = 2.0) -> GenerationRequest:
    return GenerationRequest(
        prompt_ids,
        SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=0),
        Personalization({"helpful": 1.0}, beta=beta),
    )


def test_budget_head_round_trips_and_a_head_json_without_it_loads(tiny_base: BaseModel, tmp_path: Path) -> None:
    head = _budget_head(tiny_base, kind="lora")
    folder = save_head(head, tmp_path / "h")
    assert json.loads((folder / HEAD_JSON).read_text())["budget_scales"] == list(SCALES)
    loaded = load_head(folder, tiny_base)
    assert loaded.meta == head.meta and loaded.output.budget_scales == SCALES
    for (k1, v1), (k2, v2) in zip(head.output.state_dict().items(), loaded.output.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    # a head written before budget features existed has no such key: it is budget-blind
    plain = save_head(randomize_head(new_head(tiny_base, "concise"), 1), tmp_path / "plain")
    meta = json.loads((plain / HEAD_JSON).read_text())
    del meta["budget_scales"]
    (plain / HEAD_JSON).write_text(json.dumps(meta))
    old = load_head(plain, tiny_base)
    assert old.meta.budget_scales == () and "budget_dir" not in old.output.state_dict()
    # head.json promising budget features the tensors lack is refused with what was expected
    meta["budget_scales"] = [2.0]
    (plain / HEAD_JSON).write_text(json.dumps(meta))
    with pytest.raises(HeadFormatError, match="budget features=1"):
        load_head(plain, tiny_base)


@pytest.mark.parametrize("scales", [(0.0,), (-1.0,), (math.nan,), (math.inf,), tuple(range(1, 10))])
def test_bad_budget_scales_are_refused(tiny_base: BaseModel, scales: tuple[float, ...]) -> None:
    with pytest.raises(HeadFormatError, match="budget_scales"):
        new_head(tiny_base, "helpful", budget_scales=scales)
    with pytest.raises(ConfigError, match="budget_scales"):
        TrainConfig(budget_scales=scales)
    with pytest.raises(ConfigError, match="implicit"):
        TrainConfig(kind="implicit", budget_scales=(1.0,))


def _guided_by_formula(base: BaseModel, head: ValueHead, ids: tuple[int, ...], remaining: int | None, beta: float):
    """Guided first-token scores computed straight from the head's own ``forward`` (the training formula)."""
    with torch.inference_mode():
        hidden = base.model.get_decoder()(torch.tensor([ids])).last_hidden_state[:, -1].float()  # (1, H)
        logits = base.model.get_output_embeddings()(hidden).float()  # (1, V)
        emb = base.model.get_output_embeddings().weight.float()
        left = None if remaining is None else torch.tensor([remaining])
        q = head.output(hidden, emb, left)  # (1, V)
    top = logits.topk(20).indices[0]
    z = (q[0, top] - q[0, top].mean()) / head.meta.calibration.scale
    return logits[0].index_add(0, top, beta * z)


def test_decoder_values_are_the_heads_formula_and_depend_on_the_budget_near_the_limit(
    fresh_tiny_base: BaseModel,
) -> None:
    base = fresh_tiny_base
    head = _budget_head(base)
    engine = Engine(base, [head])
    ids = tuple(base.encode_prompt(PROMPT))
    scores = {n: engine.next_token_scores([_request(base, ids, n)])[0] for n in (1, 2, 5, 400)}
    for n, got in scores.items():  # the first token leaves n - 1
        assert torch.allclose(got, _guided_by_formula(base, head, ids, n - 1, 2.0), atol=1e-4)
    assert not torch.allclose(scores[1], scores[400], atol=1e-3)  # the last token is steered differently
    blind = copy.deepcopy(head)
    blind.output.budget_dir.data.zero_()
    blind.output.budget_bias.data.zero_()
    far = _guided_by_formula(base, blind, ids, None, 2.0)
    assert torch.allclose(scores[400], far, atol=1e-4)  # far from the limit the features vanish


def test_budget_heads_mix_with_budget_blind_heads(fresh_tiny_base: BaseModel) -> None:
    base = fresh_tiny_base
    aware = _budget_head(base)
    plain = randomize_head(new_head(base, "concise", kind="linear"), 3)
    ids = tuple(base.encode_prompt(PROMPT))
    alone = Engine(base, [plain]).next_token_scores(
        [GenerationRequest(ids, SamplingParams(max_new_tokens=1), Personalization({"concise": 1.0}, beta=2.0))]
    )[0]
    mixed = Engine(base, [plain, aware]).next_token_scores(
        [GenerationRequest(ids, SamplingParams(max_new_tokens=1), Personalization({"concise": 1.0}, beta=2.0))]
    )[0]
    assert torch.allclose(alone, mixed, atol=1e-5)  # the blind head's slot pads with zero budget features


def test_cached_budget_decoding_equals_recomputation(fresh_tiny_base: BaseModel) -> None:
    base = fresh_tiny_base
    engine = Engine(base, [_budget_head(base, kind="lora")])
    n = 8
    request = _request(base, tuple(base.encode_prompt(PROMPT)), n, beta=4.0)
    events = list(engine.stream([request]))
    tokens = [e.token_id for e in events]
    for t, event in enumerate(events):  # a prefix of t tokens with n - t left sees the same budget
        prefix = _request(base, request.prompt_ids + tuple(tokens[:t]), n - t, beta=4.0)
        recomputed = float(torch.log_softmax(engine.next_token_scores([prefix])[0], -1)[event.token_id])
        assert event.logprob is not None
        assert abs(recomputed - event.logprob) < 1e-4, (t, recomputed, event.logprob)


def test_taken_values_include_the_budget_terms(fresh_tiny_base: BaseModel) -> None:
    base = fresh_tiny_base
    head = _budget_head(base)
    engine = Engine(base, [head])
    stack = engine.heads.stack
    assert stack is not None
    hidden = torch.randn(2, base.hidden_size)
    emb = base.model.get_output_embeddings().weight.detach().float()
    tokens = torch.tensor([3, 7])
    remaining = torch.tensor([0, 50])
    entries = ValueEntries(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([1.0, 0.5]))
    got = taken_values(hidden, tokens, emb, stack, entries, 2, remaining)
    with torch.no_grad():
        q = head.output(hidden, emb, remaining)  # (2, V)
    want = torch.stack([q[0, 3], 0.5 * q[1, 7]])
    assert torch.allclose(got, want, atol=1e-4)


def test_collate_counts_the_tokens_left_after_each_action(tiny_base: BaseModel) -> None:
    rollouts = sample_rollouts(Engine(tiny_base), [PROMPT], RolloutConfig(2, 6, batch_size=2))
    eos = tiny_base.eos_token_ids[0]
    batch = _collate(rollouts, sparse_rewards(rollouts, [0.0, 1.0], eos), tiny_base.pad_token_id, eos, horizon=6)
    T = batch.remaining.shape[1]
    assert batch.remaining[0].tolist() == [5.0 - t for t in range(T)]
    with pytest.raises(ConfigError, match="token limit"):
        _collate(rollouts, sparse_rewards(rollouts, [0.0, 1.0], eos), tiny_base.pad_token_id, eos, horizon=T - 1)


def test_a_budget_aware_head_learns_what_only_the_last_token_earns(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    """Reward paid for the response's last token only (like an answer cut mid-sentence): a head that knows
    the limit is near fits it better than the same head without budget features, from the same start."""
    base = fresh_tiny_base
    prompts = [PROMPT, "Explain photosynthesis.", "I love sunny days", "Water boils at"]
    horizon = 6
    config = RolloutConfig(samples_per_prompt=6, max_new_tokens=horizon, batch_size=8)
    rollouts = sample_rollouts(Engine(base), prompts, config)
    good = set(range(0, base.vocab_size, 2))
    scores = [float(bool(r.response_ids) and r.response_ids[-1] in good) for r in rollouts]
    assert 0 < sum(scores) < len(scores)
    losses = {}
    for name, scales in (("blind", ()), ("aware", (1.0, 2.0))):
        train = TrainConfig(kind="linear", epochs=8, batch_size=4, head_lr=2e-2, seed=0, budget_scales=scales)
        head, report = train_head(
            base, rollouts, scores, "last", tmp_path / name, reward_name="t", config=train, horizon=horizon
        )
        losses[name] = report.epoch_losses[-1]
        if scales:
            assert float(head.output.budget_dir.detach().abs().sum()) > 0
            assert load_head(tmp_path / name, base).meta.budget_scales == scales
    assert losses["aware"] < losses["blind"], losses
    with pytest.raises(ConfigError, match="horizon"):
        train = TrainConfig(kind="linear", epochs=1, budget_scales=(1.0,))
        train_head(base, rollouts, scores, "last", tmp_path / "x", reward_name="t", config=train)


def test_a_budget_blind_head_warm_starts_a_budget_aware_one(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    base = fresh_tiny_base
    rollouts = sample_rollouts(Engine(base), [PROMPT], RolloutConfig(4, 6, batch_size=4))
    scores = [0.0, 1.0, 0.0, 1.0]
    first = randomize_head(new_head(base, "long", kind="linear"), 2)
    warm = TrainConfig(kind="linear", epochs=1, batch_size=2, head_lr=1e-12, budget_scales=SCALES)
    second, _ = train_head(
        base, rollouts, scores, "long", tmp_path / "a", reward_name="len", config=warm, init=first, horizon=6
    )
    assert torch.allclose(second.output.down.weight, first.output.down.weight, atol=1e-6)
    assert float(second.output.budget_dir.detach().abs().max()) < 1e-6  # starts at zero: the warm start's values
    with pytest.raises(ConfigError, match="budget features"):
        other = TrainConfig(kind="linear", epochs=1, batch_size=2, budget_scales=(3.0,))
        train_head(
            base, rollouts, scores, "long", tmp_path / "b", reward_name="len", config=other, init=second, horizon=6
        )
