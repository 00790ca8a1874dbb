"""The stopping option: stop rewards at sentence ends, the stopping rule, cut returns, and training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from personalize.errors import ConfigError
from personalize.heads import load_head
from personalize.models import BaseModel
from personalize.training import TrainConfig, lambda_returns, train_head
from personalize.training.rollouts import Rollout
from personalize.training.stopping import expected_rewards, stop_scores, stop_targets
from tests.unit.test_training import _CountA, _letters


def test_lambda_returns_stop_where_the_policy_ends_the_answer() -> None:
    # Actions a0..a3 with rewards [0, 1, 0, 2]; the policy ends the answer at s2 (before a2), worth 0.5 there.
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    mask = torch.ones(1, 4)
    stops = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    stop_values = torch.tensor([[0.0, 0.0, 0.5, 0.0]])
    # lambda 1: a1 earns 1 then ends (1.5), a0 earns 0 + 1.5; a2 and a3 go on as rolled out (2, 2)
    g = lambda_returns(rewards, values, mask, lam=1.0, stops=stops, stop_values=stop_values)
    assert torch.allclose(g, torch.tensor([[1.5, 1.5, 2.0, 2.0]]))
    # lambda 0.5, gamma 1: d3 = 2 - 0.4 = 1.6; d2 = 0.4 - 0.3 = 0.1; d1 = 1 + 0.5 - 0.2 = 1.3 (no trace past s2);
    # d0 = 0.2 - 0.1 = 0.1. A3 = 1.6, A2 = 0.1 + 0.8 = 0.9, A1 = 1.3, A0 = 0.1 + 0.65 = 0.75
    g = lambda_returns(rewards, values, mask, lam=0.5, stops=stops, stop_values=stop_values)
    assert torch.allclose(g, torch.tensor([[0.85, 1.5, 1.2, 2.0]]), atol=1e-6)
    # a stop on padding, or at the first state (nothing comes before it), changes nothing
    padded = lambda_returns(
        rewards, values, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), lam=1.0, stops=torch.tensor([[1.0, 0.0, 1.0, 0.0]]),
        stop_values=torch.full((1, 4), 9.0),
    )  # fmt: skip
    assert torch.allclose(padded, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="stop_values"):
        lambda_returns(rewards, values, mask, stops=stops)


def test_stop_scores_score_each_sentence_end_as_a_finished_answer() -> None:
    cut = Rollout("p", (1,), (0, 26, 1, 0, 27, 0, 0), "a.ba:aa", "length", 0)  # ends a sentence after 2 and 5 tokens
    stopped = Rollout("q", (1,), (0, 0, 26), "aa.", "stop", 1, stop_token_id=99)  # its only end is its last token
    reward = _CountA()
    scored: list[int] = []
    assert stop_scores([cut, stopped], reward, _letters, batch_size=1, on_scored=scored.append) == [
        {2: 1.0, 5: 2.0},
        {},
    ]
    assert reward.seen == ["a.", "a.ba:"] and scored == [1, 1]


def test_expected_rewards_leave_the_rollout_itself_out() -> None:
    rollouts = [Rollout(p, (1,), (0,), "a", "length", i) for i, p in enumerate("ppqr")]
    # p: the other p; q and r are alone: the mean of all the others
    assert expected_rewards(rollouts, [1.0, 3.0, 5.0, 7.0]) == [3.0, 1.0, 11 / 3, 3.0]
    with pytest.raises(ConfigError, match="at least 2 rollouts"):
        expected_rewards(rollouts[:1], [1.0])


def test_stop_targets_value_each_end_and_stop_where_it_beats_the_expected_reward() -> None:
    one = Rollout("p", (1,), (0, 26, 1, 0, 27, 0, 0), "a.ba:aa", "length", 0)  # 7 actions
    two = Rollout("p", (1,), (1, 26, 1), "b.b", "stop", 1, stop_token_id=99)  # 4 actions, EOS last
    paid = [[0.0, 0.25, 0.0, 0.0, 0.5, 0.0, 0.25], [0.0, 0.0, 0.0, 0.5]]
    scores = [1.0, 0.5]
    ends = [{2: 0.75, 5: 0.25}, {2: 0.125}]
    targets = stop_targets([one, two], scores, paid, ends, 99)
    # returns: the stop reward less what was paid before the state (0.25 before s2, 0.75 before s5)
    assert targets.values == [{2: 0.5, 5: -0.5}, {2: 0.125}]
    # one's expected reward is two's score (0.5): it stops at s2 (0.75), not at s5 (0.25);
    # two's is one's (1.0): it never stops early and keeps its own score
    assert targets.stops == [frozenset({2}), frozenset()]
    assert targets.rule_scores == [0.75, 0.5]
    # with a charge, an answer ended on a colon is unfinished: s5 is charged
    charged = stop_targets([one, two], scores, paid, ends, 99, decode=_letters, unfinished_penalty=0.5)
    assert charged.values == [{2: 0.5, 5: -1.0}, {2: 0.125}]
    with pytest.raises(ConfigError, match="needs decode"):
        stop_targets([one, two], scores, paid, ends, 99, unfinished_penalty=0.5)
    with pytest.raises(ConfigError, match=r"state 7 of a rollout with 7 actions \(valid: 1\.\.6\)"):
        stop_targets([one, two], scores, paid, [{7: 1.0}, {}], 99)
    with pytest.raises(ConfigError, match="one score, reward list and stop-reward map per rollout"):
        stop_targets([one, two], scores, paid, ends[:1], 99)


def test_training_with_the_stopping_option_learns_the_value_of_ending(
    fresh_tiny_base: BaseModel, tmp_path: Path
) -> None:
    """Every rollout is cut (reward 0) but could have ended after its 4th token for a reward of 1: with the
    stopping option the head values ending there, and the tokens before it as worth that ending."""
    from personalize.training.td import _collate, _Trainable

    base = fresh_tiny_base
    gen = torch.Generator().manual_seed(0)
    vocab = min(base.vocab_size, 200)
    prompts = ["say something", "say more"]
    rollouts = []
    for i in range(32):
        prompt = prompts[i % 2]
        tokens = tuple(torch.randint(10, vocab, (10,), generator=gen).tolist())
        rollouts.append(Rollout(prompt, tuple(base.encode_prompt(prompt)), tokens, "", "length", i))
    scores = [0.0] * len(rollouts)
    ends = [{4: 1.0} for _ in rollouts]
    eos = base.eos_token_ids[0]
    probe = _collate(rollouts[:8], [[0.0] * 10 for _ in range(8)], base.pad_token_id, eos)
    learned = {}
    for option in (True, False):
        config = TrainConfig(kind="linear", epochs=8, head_lr=1e-2, batch_size=8, stop_option=option)
        out = tmp_path / str(option)
        _, report = train_head(
            base, rollouts, scores, "end", out, reward_name="end", config=config, stop_rewards=ends if option else None
        )
        head = load_head(out, base)
        assert head.meta.training["config"]["stop_option"] is option
        with torch.no_grad():
            q, q_end = _Trainable(base, head, config).q_values(probe)
        learned[option] = (float(q[:, :4].mean()), float(q_end[:, 4].mean()), float(q[:, 4:].mean()))
        if option:
            assert report.stopping == head.meta.training["stopping"]
            assert report.stopping["ends"] == 32 and report.stopping["rule_stops"] == 32
            assert report.stopping["rollout_mean"] == 0.0 and report.stopping["rule_mean"] == 1.0
    before, ending, after = learned[True]
    assert before > 0.6 and ending > 0.6 and abs(after) < 0.3, learned  # worth the ending; past it, the cut answer
    assert learned[False][0] < 0.3 and learned[False][1] < 0.3, learned  # without it: all cut, worth 0
    with pytest.raises(ConfigError, match="one stop-reward map per rollout, got none"):
        train_head(
            base,
            rollouts,
            scores,
            "end",
            tmp_path / "x",
            reward_name="end",
            config=TrainConfig("linear", stop_option=True),
        )
    with pytest.raises(ConfigError, match="value heads"):
        TrainConfig(kind="implicit", stop_option=True)
