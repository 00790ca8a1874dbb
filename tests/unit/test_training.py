"""TD(lambda) targets and a short training run on the tiny model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.heads import load_head
from personalize.models import BaseModel
from personalize.training import RolloutConfig, TrainConfig, lambda_returns, sample_rollouts, train_head
from personalize.training.td import checkpoint_dir


def test_lambda_returns_hand_computed() -> None:
    # One response of 3 tokens, reward 1 at the end, values V = [0.2, 0.5, 0.9], gamma 1, lambda 0.5.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.2, 0.5, 0.9, 7.0]])  # the 4th entry is padding and must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    g = lambda_returns(rewards, values, mask, gamma=1.0, lam=0.5)
    # deltas: d2 = 1 - 0.9 = 0.1; d1 = 0.9 - 0.5 = 0.4; d0 = 0.5 - 0.2 = 0.3
    # A2 = 0.1; A1 = 0.4 + 0.5*0.1 = 0.45; A0 = 0.3 + 0.5*0.45 = 0.525
    # G = A + V = [0.725, 0.95, 1.0, 0]
    assert torch.allclose(g, torch.tensor([[0.725, 0.95, 1.0, 0.0]]), atol=1e-6)
    # lambda = 1 is the Monte-Carlo return, lambda = 0 is one-step TD
    assert torch.allclose(lambda_returns(rewards, values, mask, lam=1.0)[0, :3], torch.ones(3))
    assert torch.allclose(lambda_returns(rewards, values, mask, lam=0.0)[0, :3], torch.tensor([0.5, 0.9, 1.0]))


def test_lambda_returns_discount_and_batch() -> None:
    rewards = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    values = torch.zeros(2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    g = lambda_returns(rewards, values, mask, gamma=0.5, lam=1.0)
    assert torch.allclose(g, torch.tensor([[1.0, 2.0], [3.0, 0.0]]))


@pytest.mark.parametrize("kind", ["lora", "linear"])
def test_short_training_run_loss_falls_and_head_steers(fresh_tiny_base: BaseModel, tmp_path: Path, kind: str) -> None:
    base = fresh_tiny_base
    engine = Engine(base)
    prompts = ["How do I clean my keyboard?", "Explain photosynthesis.", "I love sunny days", "Water boils at"]
    rollouts = sample_rollouts(engine, prompts, RolloutConfig(samples_per_prompt=4, max_new_tokens=12, batch_size=8))
    assert len(rollouts) == 16 and all(r.response_ids for r in rollouts)
    # A learnable objective: reward = share of response tokens that are in a fixed "good" set.
    good = set(range(0, base.vocab_size, 3))
    scores = [sum(t in good for t in r.response_ids) / len(r.response_ids) for r in rollouts]
    config = TrainConfig(kind=kind, epochs=6, batch_size=4, lr=3e-3, head_lr=1e-2, seed=0)  # type: ignore[arg-type]
    out = tmp_path / "good"
    _, report = train_head(base, rollouts, scores, "good", out, reward_name="test:good", config=config)
    assert report.epoch_losses[-1] < report.epoch_losses[0] * 0.7, report.epoch_losses
    assert not checkpoint_dir(out).exists()  # removed after a completed run
    loaded = load_head(out, base)
    assert loaded.meta.reward == "test:good" and loaded.meta.calibration.scale > 0
    assert loaded.meta.training["epoch_losses"] == [round(x, 6) for x in report.epoch_losses]
    assert abs(loaded.meta.calibration.return_mean - sum(scores) / len(scores)) < 1e-5
    engine.add_head(loaded)
    sampling = SamplingParams(max_new_tokens=12, seed=3)
    reqs = [
        GenerationRequest(tuple(base.encode_prompt(p)), sampling, Personalization({"good": 1.0}, beta=4.0))
        for p in prompts
    ]
    plain = [GenerationRequest(r.prompt_ids, sampling, Personalization(method="base")) for r in reqs]
    share = [sum(t in good for t in res.token_ids) / max(len(res.token_ids), 1) for res in engine.generate(reqs)]
    base_share = [sum(t in good for t in res.token_ids) / max(len(res.token_ids), 1) for res in engine.generate(plain)]
    assert sum(share) > sum(base_share)


def test_training_resumes_from_checkpoint(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    base = fresh_tiny_base
    rollouts = sample_rollouts(Engine(base), ["Explain photosynthesis."], RolloutConfig(4, 8, batch_size=4))
    scores = [0.0, 1.0, 0.0, 1.0]  # varied: the head learns, so its values spread and get a scale
    out = tmp_path / "h"
    calls: list[int] = []
    config = TrainConfig(kind="linear", epochs=2, batch_size=2)

    def interrupt(epoch: int, step: int, loss: float) -> None:
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_head(base, rollouts, scores, "long", out, reward_name="len", config=config, on_step=interrupt)
    assert (checkpoint_dir(out) / "state.json").is_file()
    saved = load_head(checkpoint_dir(out) / "head").meta.calibration
    assert saved is not None and saved.scale != 1.0 and saved.scale > 0  # calibrated: usable as it stands
    calls.clear()
    _, report = train_head(
        base,
        rollouts,
        scores,
        "long",
        out,
        reward_name="len",
        config=config,
        on_step=lambda e, s, loss: calls.append(e),
    )
    assert set(calls) == {1} and len(report.epoch_losses) == 2  # epoch 0 came from the checkpoint


def test_implicit_head_fine_tunes_on_the_best_rollouts(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    from personalize.training.implicit import select_best

    base = fresh_tiny_base
    prompts = ["How do I clean my keyboard?", "Explain photosynthesis.", "I love sunny days"]
    rollouts = sample_rollouts(
        Engine(base), prompts, RolloutConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=9)
    )
    good = set(range(0, base.vocab_size, 3))
    scores = [sum(t in good for t in r.response_ids) / max(len(r.response_ids), 1) for r in rollouts]
    chosen = select_best(rollouts, scores, 1.0)
    assert len(chosen) == 3 and len({rollouts[i].prompt for i in chosen}) == 3
    for i in chosen:  # each prompt's best
        assert scores[i] == max(s for r, s in zip(rollouts, scores, strict=True) if r.prompt == rollouts[i].prompt)
    assert len(select_best(rollouts, scores, 0.34)) == 1
    all_linear = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config = TrainConfig(kind="implicit", epochs=20, batch_size=3, lr=1e-2, lora_targets=all_linear, top_fraction=1.0)
    _, report = train_head(base, rollouts, scores, "good-sft", tmp_path / "sft", reward_name="test:good", config=config)
    assert report.epoch_losses[-1] < report.epoch_losses[0] - 0.3, report.epoch_losses  # a random model learns slowly
    loaded = load_head(tmp_path / "sft", base)
    assert loaded.meta.kind == "implicit" and loaded.meta.calibration.scale == 1.0
    assert not (tmp_path / "sft" / "value_head.safetensors").exists()
    engine = Engine(base, [loaded])
    # the implicit head at beta·w = 1 raises the likelihood of what it was tuned on (over the base top-k)
    gains = []
    for i in chosen:
        r = rollouts[i]
        for t, token in enumerate(r.response_ids):
            ids = r.prompt_ids + r.response_ids[:t]
            sampling = SamplingParams(max_new_tokens=4)
            guided, plain = engine.next_token_scores(
                [
                    GenerationRequest(ids, sampling, Personalization({"good-sft": 1.0}, beta=1.0, method="vas")),
                    GenerationRequest(ids, sampling, Personalization(method="base")),
                ]
            )
            gains.append(float(torch.log_softmax(guided, -1)[token] - torch.log_softmax(plain, -1)[token]))
    assert sum(gains) / len(gains) > 0.1, gains


def test_actions_end_with_eos_only_when_the_response_stopped_on_its_own() -> None:
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import sparse_rewards
    from personalize.training.td import _collate

    stopped = Rollout("p", (5, 6), (7, 8, 9), "abc", "stop", 0)
    cut = Rollout("q", (5,), (7, 8), "ab", "length", 1)
    batch = _collate([stopped, cut], sparse_rewards([stopped, cut], [1.0, 0.5], eos=2), pad_id=0, eos=2)
    assert batch.actions[0].tolist() == [7, 8, 9, 2] and batch.mask[0].tolist() == [1, 1, 1, 1]
    assert batch.actions[1, :2].tolist() == [7, 8] and batch.mask[1].tolist() == [1, 1, 0, 0]
    # EOS is chosen at the hidden state after the last response token; rewards sit on each last action
    assert batch.positions[0].tolist() == [1, 2, 3, 4] and batch.input_ids[0].tolist() == [5, 6, 7, 8, 9]
    assert batch.rewards.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0]]


def test_actions_end_with_the_eos_the_rollout_sampled() -> None:
    from personalize.training.rollouts import Rollout, actions

    # a model can end on several tokens (end of turn, end of text): the one sampled is the action
    assert actions(Rollout("p", (5,), (7, 8), "ab", "stop", 0, stop_token_id=0), eos=2) == [7, 8, 0]
    assert actions(Rollout("p", (5,), (7, 8), "ab", "stop", 0), eos=2) == [7, 8, 2]  # older rollout files
    assert actions(Rollout("p", (5,), (7, 8), "ab", "length", 0, stop_token_id=None), eos=2) == [7, 8]


def test_rollouts_record_the_eos_they_stopped_on(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    from personalize.training import load_rollouts, save_rollouts

    base = fresh_tiny_base
    ends = list(range(3, base.vocab_size, 2))  # many end tokens: most rollouts stop within a few steps
    base.model.generation_config.eos_token_id = ends
    rollouts = sample_rollouts(
        Engine(base),
        ["How do I clean my keyboard?", "Water boils at"],
        RolloutConfig(samples_per_prompt=4, max_new_tokens=8, batch_size=8),
    )
    stopped = [r for r in rollouts if r.finish_reason == "stop"]
    assert stopped and all(r.stop_token_id in ends and r.stop_token_id not in r.response_ids for r in stopped)
    assert all(r.stop_token_id is None for r in rollouts if r.finish_reason == "length")
    assert len({r.stop_token_id for r in stopped}) > 1  # not one fixed EOS
    save_rollouts(rollouts, tmp_path / "r.jsonl")
    assert load_rollouts(tmp_path / "r.jsonl") == rollouts
    old = tmp_path / "old.jsonl"  # a file written before stop tokens were recorded
    old.write_text(
        '{"prompt": "p", "prompt_ids": [5], "response_ids": [7], "response": "a", "finish_reason": "stop", "seed": 0}\n'
    )
    assert load_rollouts(old)[0].stop_token_id is None


def test_rollouts_with_unicode_line_breaks_in_their_text_read_back(tmp_path: Path) -> None:
    from personalize.training import load_rollouts, save_rollouts
    from personalize.training.rollouts import Rollout

    texts = ["one\u2028two", "three\x85four", "five\x1cix\u2029", "six\r\nseven\n"]
    rollouts = [Rollout("p\u2028q", (5,), (7, 8), text, "length", i) for i, text in enumerate(texts)]
    path = tmp_path / "r.jsonl"
    save_rollouts(rollouts, path)
    assert load_rollouts(path) == rollouts
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]  # written through a temporary file, then renamed


def test_rollouts_from_a_steered_policy(fresh_tiny_base: BaseModel, tiny_head_dir) -> None:
    from personalize.errors import ConfigError

    base = fresh_tiny_base
    engine = Engine(base, [load_head(tiny_head_dir("short", kind="lora", seed=1), base)])
    prompts = ["How do I clean my keyboard?", "Water boils at"]
    config = RolloutConfig(samples_per_prompt=3, max_new_tokens=8, batch_size=4)
    plain = sample_rollouts(engine, prompts, config)
    # weight 0 is the base policy exactly; a real weight changes what is sampled, from the same seeds
    assert sample_rollouts(engine, prompts, config, policy=Personalization({"short": 0.0})) == plain
    steered = sample_rollouts(engine, prompts, config, policy=Personalization({"short": 1.0}, beta=8.0))
    assert [r.seed for r in steered] == [r.seed for r in plain]
    assert [r.response_ids for r in steered] != [r.response_ids for r in plain]
    with pytest.raises(ConfigError, match="no head"):
        sample_rollouts(engine, prompts, config, policy=Personalization({"long": 1.0}))
    with pytest.raises(ConfigError, match="base or a vas-steered policy"):
        sample_rollouts(engine, prompts, config, policy=Personalization({"short": 1.0}, method="bon", best_of=2))


def test_a_head_trains_on_a_base_an_engine_decoded_with_lora_heads(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    base = fresh_tiny_base
    engine = Engine(base)
    prompts = ["How do I clean my keyboard?", "Water boils at"]
    rollouts = sample_rollouts(engine, prompts, RolloutConfig(samples_per_prompt=2, max_new_tokens=6, batch_size=4))
    scores = [float(len(r.response_ids)) for r in rollouts]
    config = TrainConfig(kind="lora", epochs=1, batch_size=4, seed=0)
    train_head(base, rollouts, scores, "first", tmp_path / "first", reward_name="test:len", config=config)
    engine.add_head(load_head(tmp_path / "first", base))  # wraps the base's q/v projections in place
    sampling = SamplingParams(max_new_tokens=4, seed=1)
    engine.generate([GenerationRequest(rollouts[0].prompt_ids, sampling, Personalization({"first": 1.0}))])
    _, report = train_head(base, rollouts, scores, "second", tmp_path / "second", reward_name="test:len", config=config)
    assert len(report.epoch_losses) == 1
    assert load_head(tmp_path / "second", base).adapter


def test_training_warm_starts_from_a_trained_head(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    from personalize.errors import ConfigError

    base = fresh_tiny_base
    rollouts = sample_rollouts(Engine(base), ["Explain photosynthesis."], RolloutConfig(4, 8, batch_size=4))
    scores = [0.0, 1.0, 0.0, 1.0]
    config = TrainConfig(kind="lora", epochs=5, batch_size=2, lora_layers=1, lr=1e-3, head_lr=1e-2)
    first, _ = train_head(base, rollouts, scores, "long", tmp_path / "a", reward_name="len", config=config)
    warm = TrainConfig(kind="lora", epochs=1, batch_size=2, lora_layers=1, lr=1e-12, head_lr=1e-12)
    second, again = train_head(
        base, rollouts, scores, "long", tmp_path / "b", reward_name="len", config=warm, init=load_head(tmp_path / "a")
    )
    # a learning rate of ~0 keeps the warm start: the trained head's weights and its loss level, not a fresh head's
    assert first.adapter is not None and second.adapter is not None
    assert all(torch.allclose(second.adapter[k], first.adapter[k], atol=1e-6) for k in first.adapter)
    assert torch.allclose(second.output.down.weight, first.output.down.weight, atol=1e-6)
    cold, fresh = train_head(base, rollouts, scores, "long", tmp_path / "c", reward_name="len", config=warm)
    assert again.epoch_losses[0] < fresh.epoch_losses[0]
    assert not torch.allclose(cold.output.down.weight, first.output.down.weight)
    with pytest.raises(ConfigError, match="LoRA"):
        other = TrainConfig(kind="lora", epochs=1, batch_size=2, lora_layers=1, lora_rank=4)
        train_head(base, rollouts, scores, "long", tmp_path / "d", reward_name="len", config=other, init=first)
    with pytest.raises(ConfigError, match="'linear' head"):
        linear = TrainConfig(kind="linear", epochs=1, batch_size=2)
        train_head(base, rollouts, scores, "long", tmp_path / "e", reward_name="len", config=linear, init=first)
    with pytest.raises(ConfigError, match="value heads"):  # an implicit head would silently ignore it
        implicit = TrainConfig(kind="implicit", epochs=1, batch_size=2, lora_layers=1)
        train_head(base, rollouts, scores, "long", tmp_path / "f", reward_name="len", config=implicit, init=first)


def test_lora_warm_start_loads_the_adapter(fresh_tiny_base: BaseModel) -> None:
    from personalize.errors import ConfigError
    from personalize.training.td import adapter_state, peft_copy

    config = TrainConfig(kind="lora", lora_layers=1)
    fresh = peft_copy(fresh_tiny_base, config)
    trained = {k: torch.randn_like(v) for k, v in adapter_state(fresh).items()}
    restored = adapter_state(peft_copy(fresh_tiny_base, config, trained))
    assert restored.keys() == trained.keys()
    assert all(torch.equal(restored[k], trained[k]) for k in trained)  # not silently left at zero
    with pytest.raises(ConfigError, match="unexpected keys"):
        peft_copy(fresh_tiny_base, config, {k.replace("lora_A", "lora_X"): v for k, v in trained.items()})


def _letters(ids: Sequence[int]) -> str:
    """A toy decoder: token id i < 26 is the i-th lower-case letter, 26 a full stop, 27 a colon."""
    return "".join({26: ".", 27: ":"}.get(i) or chr(ord("a") + i) for i in ids)


class _CountA:
    """A toy reward: the number of a's in the response."""

    name = "count-a"
    description = "number of a's"
    value_range = (0.0, float("inf"))

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        self.seen.extend(responses)
        return torch.tensor([float(r.count("a")) for r in responses])


def test_token_shaping_pays_each_token_its_change_and_sums_to_the_final_reward() -> None:
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import shaped_rewards

    stopped = Rollout("p", (1,), (0, 1, 0, 0), "abaa", "stop", 0)  # actions: a b a a EOS
    cut = Rollout("q", (1,), (1, 0, 2), "bac", "length", 1)  # actions: b a c
    rewards = shaped_rewards([stopped, cut], [5.0, 1.0], _CountA(), _letters, 99, mode="token")
    # phi after the first three tokens: 1 1 2; the last token is not scored: the final reward (5) settles
    assert rewards[0] == [1.0, 0.0, 1.0, 0.0, 3.0]
    assert rewards[1] == [0.0, 1.0, 0.0]
    assert [sum(r) for r in rewards] == [5.0, 1.0]


class _CountAPrefix(_CountA):
    """_CountA whose unfinished responses count double (a reward with its own prefix_score)."""

    def prefix_score(self, prompts: Sequence[str], prefixes: Sequence[str]) -> torch.Tensor:
        return 2.0 * torch.tensor([float(p.count("a")) for p in prefixes])


def test_shaping_uses_the_rewards_prefix_score_when_it_has_one() -> None:
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import shaped_rewards

    stopped = Rollout("p", (1,), (0, 1, 0, 0), "abaa", "stop", 0)  # actions: a b a a EOS
    reward = _CountAPrefix()
    rewards = shaped_rewards([stopped], [5.0], reward, _letters, 99, mode="token")
    assert reward.seen == []  # prefixes went to prefix_score, not __call__
    # phi after the first three tokens: 2 2 4; the final reward (5) settles at EOS
    assert rewards == [[2.0, 0.0, 2.0, 0.0, 1.0]]


def test_sentence_shaping_scores_prefixes_only_at_sentence_ends() -> None:
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import shaped_rewards

    rollout = Rollout("p", (1,), (0, 0, 26, 1, 0, 26, 2), "aa.ba.c", "length", 0)
    reward = _CountA()
    rewards = shaped_rewards([rollout], [10.0], reward, _letters, 99, mode="sentence")
    assert reward.seen == ["aa.", "aa.ba."]
    assert rewards == [[0.0, 0.0, 2.0, 0.0, 0.0, 1.0, 7.0]]


def test_sentence_cuts_from_token_pieces_match_decoding_every_prefix(tiny_base: BaseModel) -> None:
    """The cut points found from each token's text are those of decoding every prefix (byte-level BPE)."""
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import _SENTENCE_END, _cut_points

    tokenizer = tiny_base.tokenizer
    text = "Sure! Here is how:\n1. Unplug it.  Then shake it?\tDone.\n\nCafé time: ok … fine. Last"
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    rollout = Rollout("p", (1,), ids, text, "length", 0)

    def decode(token_ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(token_ids)))

    slow = [t for t in range(len(ids) - 1) if decode(ids[: t + 1]).rstrip(" \t")[-1:] in _SENTENCE_END - {""}]
    fast = _cut_points(rollout, "sentence", lambda token: decode([token]))
    assert len(slow) >= 8 and fast == slow


def test_no_shaping_is_the_final_reward_on_the_last_action() -> None:
    from personalize.errors import ConfigError
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import shaped_rewards

    rollouts = [Rollout("p", (1,), (0, 1), "ab", "stop", 0), Rollout("p", (1,), (), "", "stop", 1)]
    assert shaped_rewards(rollouts, [2.0, -1.0], _CountA(), _letters, 99, mode="none") == [[0.0, 0.0, 2.0], [-1.0]]
    with pytest.raises(ConfigError, match="shaping must be one of"):
        shaped_rewards(rollouts, [2.0, -1.0], _CountA(), _letters, 99, mode="words")  # type: ignore[arg-type]


def test_unfinished_penalty_charges_responses_that_stop_mid_sentence() -> None:
    from personalize.errors import ConfigError
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import charge_unfinished

    finished = Rollout("p", (1,), (0, 1), "Done.", "stop", 0, stop_token_id=99)  # actions: 2 tokens + EOS
    stopped_mid = Rollout("p", (1,), (0, 1), "The fir", "stop", 1, stop_token_id=99)  # stopped mid-word
    cut_mid = Rollout("q", (1,), (1, 0, 2), "so the", "length", 2)  # cut by the limit mid-sentence
    cut_clean = Rollout("q", (1,), (1, 0), "Fine!", "length", 3)  # cut, but where a sentence ends
    rollouts = [finished, stopped_mid, cut_mid, cut_clean]
    paid = [[0.25, 0.0, 0.25], [0.5, 0.0, 0.0], [0.5, 0.0, 0.25], [0.0, 0.5]]
    scores, charged = charge_unfinished(rollouts, [0.5, 0.5, 0.75, 0.5], paid, 0.25)
    assert scores == [0.5, 0.25, 0.5, 0.5]
    assert charged == [[0.25, 0.0, 0.25], [0.5, 0.0, -0.25], [0.5, 0.0, 0.0], [0.0, 0.5]]  # on the last action
    assert [sum(r) for r in charged] == scores
    assert paid[1] == [0.5, 0.0, 0.0]  # the caller's lists are left as they were
    assert charge_unfinished(rollouts, [0.5, 0.5, 0.75, 0.5], None, 0.5) == ([0.5, 0.0, 0.25, 0.5], None)
    for bad in (-0.1, 2.5):
        with pytest.raises(ConfigError, match="unfinished_penalty"):
            TrainConfig(unfinished_penalty=bad)


def test_unfinished_penalty_lowers_the_calibrated_return(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    from personalize.rewards.text import ends_cleanly

    base = fresh_tiny_base
    rollouts = sample_rollouts(
        Engine(base), ["How do I clean my keyboard?", "Water boils at"], RolloutConfig(4, max_new_tokens=6)
    )
    unfinished = sum(not ends_cleanly(r.response) for r in rollouts)
    assert unfinished > 0  # random tokens seldom end a sentence
    scores = [float(len(r.response_ids)) / 6 for r in rollouts]
    reports = []
    for penalty in (0.0, 0.5):
        config = TrainConfig(kind="linear", epochs=1, batch_size=4, unfinished_penalty=penalty)
        out = tmp_path / f"p{penalty}"
        _, report = train_head(base, rollouts, scores, "x", out, reward_name="test:x", config=config, horizon=6)
        assert load_head(out, base).meta.training["config"]["unfinished_penalty"] == penalty
        reports.append(report)
    expected = reports[0].return_mean - 0.5 * unfinished / len(rollouts)
    assert reports[1].return_mean == pytest.approx(expected, abs=1e-6)


def test_shaped_training_credits_the_token_that_earned_the_reward(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    """Reward = how often one token occurs in long random responses; the head trained on prefix-shaped
    rewards must raise that token's probability where it was chosen."""
    from personalize.training.rollouts import Rollout
    from personalize.training.shaping import shaped_rewards

    base = fresh_tiny_base
    gen = torch.Generator().manual_seed(0)
    vocab = min(base.vocab_size, 200)
    prompt = tuple(base.encode_prompt("say something"))
    draws = [torch.randint(10, vocab, (12,), generator=gen).tolist() for _ in range(48)]
    state = prompt + tuple(draws[1][:3])  # where the good token is chosen in half the rollouts, and probed
    with torch.no_grad():
        base_logits = base.model(torch.tensor([state])).logits[0, -1]
    good = int(base_logits.topk(20).indices[10])  # a candidate guidance ranks, not the base's favourite
    rollouts, scores = [], []
    for i, tokens in enumerate(draws):
        if i % 2 == 0:
            tokens[3] = good
        rollouts.append(Rollout("say something", prompt, tuple(tokens), "", "length", i))
        scores.append(float(tokens.count(good)))

    class _CountGood(_CountA):
        def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
            return torch.tensor([float(r.split().count(str(good))) for r in responses])

    def words(ids: Sequence[int]) -> str:
        return " ".join(str(t) for t in ids)

    shaped = shaped_rewards(rollouts, scores, _CountGood(), words, base.eos_token_ids[0], mode="token")
    config = TrainConfig(kind="linear", epochs=6, head_lr=1e-2, batch_size=8)
    gains = {}
    for name, paid in (("shaped", shaped), ("sparse", None)):
        head, _ = train_head(
            base, rollouts, scores, "good", tmp_path / name, reward_name="good", config=config, action_rewards=paid
        )
        engine = Engine(base, [head])
        sampling = SamplingParams(max_new_tokens=4)
        guided, plain = engine.next_token_scores(
            [
                GenerationRequest(state, sampling, Personalization({"good": 1.0}, beta=1.0, method="vas")),
                GenerationRequest(state, sampling, Personalization(method="base")),
            ]
        )
        gains[name] = float(torch.log_softmax(guided, -1)[good] - torch.log_softmax(plain, -1)[good])
    # shaped credit raises the good token's log-probability; the sparse head, fed the same data, does not
    assert gains["shaped"] > 0.25 and gains["shaped"] > gains["sparse"], gains
