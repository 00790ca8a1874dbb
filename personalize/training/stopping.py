"""The option to stop: values of a policy that follows the rollout but may end the answer at any sentence end.

TD on base-model rollouts learns ``Q`` of the base model's continuation. When the base model
rarely finishes within the token limit, that continuation is mostly a cut answer, and a head
comparing "stop here" with "go on as the base model would" learns to stop early: it cannot
value "go on, then wrap up at a later sentence end", the one thing the base model never does.

This module gives TD what it needs to learn that value from the same rollouts, with no new
sampling. At every sentence end ``s_j`` of a rollout (the state after a prefix that ends a
sentence or a line), ending the answer there is an action whose reward is known exactly: the
reward of the prefix as a finished response (:func:`stop_scores`). Two things follow
(:func:`stop_targets`):

- ``Q(s_j, EOS)`` regresses on that reward at every sentence end, not only where the base model
  happened to stop;
- the returns of the actions before ``s_j`` are those of the policy that stops at ``s_j`` when
  stopping beats the base model's continuation, estimated without looking at the rollout's own
  future: the mean final reward of the other rollouts of the same prompt. That policy is one step
  of policy improvement on the stopping decision, and its returns are cut at each such sentence
  end (:func:`personalize.training.returns.lambda_returns` with ``stops``).

Stopping at a sentence end that the rule passes over is still valued (its ``Q(s_j, EOS)``), so
decoding with the head weighs both, as the policy improvement step does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

from personalize.errors import ConfigError
from personalize.rewards.base import RewardFunction
from personalize.rewards.text import ends_cleanly
from personalize.training.rollouts import Rollout, actions
from personalize.training.shaping import score_prefixes, sentence_ends, token_pieces


@dataclass(frozen=True)
class StopTargets:
    """Per rollout, per state index ``j`` (the state before action ``j``): the return of ending the
    answer there, and whether the stopping rule ends it there."""

    values: list[dict[int, float]]
    """``j -> `` the reward of the answer ended at ``s_j``, less the action rewards already paid
    before it (a return, like the TD targets of the actions)."""
    stops: list[frozenset[int]]
    """The ``j`` where the stopping rule ends the answer: its reward beats the prompt's expected one."""
    rule_scores: list[float]
    """The reward each rollout would get by the stopping rule from its start: that of its first stop,
    or its own score when the rule never stops it (what the rule is worth, before any training)."""


def stop_scores(
    rollouts: Sequence[Rollout],
    reward: RewardFunction,
    decode: Callable[[Sequence[int]], str],
    *,
    batch_size: int = 256,
    on_scored: Callable[[int], None] | None = None,
) -> list[dict[int, float]]:
    """``reward`` of each rollout's response ended at each of its sentence ends, as a finished answer.

    Keys are state indices ``j``: the answer ``response_ids[:j]``, whose last token ends a sentence
    or a line. Only states that have an action after them are listed (the final response is the
    rollout's own score).
    """
    piece = token_pieces(decode)
    cuts = [sentence_ends(r, piece) for r in rollouts]
    scored = score_prefixes(rollouts, cuts, reward, decode, batch_size=batch_size, on_scored=on_scored)
    out: list[dict[int, float]] = [{} for _ in rollouts]
    for (i, t), value in scored.items():
        out[i][t + 1] = value  # the answer response_ids[:t + 1] ends at state t + 1
    return out


def expected_rewards(rollouts: Sequence[Rollout], scores: Sequence[float]) -> list[float]:
    """For each rollout, the mean score of the other rollouts of its prompt (of all others when it is
    its prompt's only one): what going on as the policy does is worth, not knowing how this one ends."""
    if len(rollouts) < 2:
        raise ConfigError("the stopping option needs at least 2 rollouts to estimate what going on is worth")
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rollouts):
        by_prompt[r.prompt].append(i)
    total = sum(scores)
    out = []
    for i, r in enumerate(rollouts):
        group = by_prompt[r.prompt]
        if len(group) > 1:
            out.append((sum(scores[k] for k in group) - scores[i]) / (len(group) - 1))
        else:
            out.append((total - scores[i]) / (len(rollouts) - 1))
    return out


def stop_targets(
    rollouts: Sequence[Rollout],
    scores: Sequence[float],
    action_rewards: Sequence[Sequence[float]],
    stop_rewards: Sequence[Mapping[int, float]],
    eos: int,
    *,
    decode: Callable[[Sequence[int]], str] | None = None,
    unfinished_penalty: float = 0.0,
) -> StopTargets:
    """The stop returns and the stopping rule's choices (module docstring).

    ``scores`` and ``action_rewards`` are what training regresses on (after any charge for
    unfinished answers); ``stop_rewards`` come from :func:`stop_scores`. With
    ``unfinished_penalty`` the answers ended at a sentence end that does not end cleanly (a colon, a
    line break) are charged it as well, which needs ``decode``.
    """
    if not len(rollouts) == len(scores) == len(action_rewards) == len(stop_rewards):
        raise ConfigError(
            f"need one score, reward list and stop-reward map per rollout; got {len(rollouts)} rollouts, "
            f"{len(scores)} scores, {len(action_rewards)} reward lists, {len(stop_rewards)} stop-reward maps"
        )
    if unfinished_penalty and decode is None:
        raise ConfigError("charging unfinished answers ended at a sentence end needs decode")
    expected = expected_rewards(rollouts, scores)
    values: list[dict[int, float]] = []
    stops: list[frozenset[int]] = []
    rule_scores: list[float] = []
    for r, score, paid, ends, bar in zip(rollouts, scores, action_rewards, stop_rewards, expected, strict=True):
        n = len(actions(r, eos))
        bad = [j for j in ends if not 0 < j < n]
        if bad:
            raise ConfigError(f"stop rewards at state {bad[0]} of a rollout with {n} actions (valid: 1..{n - 1})")
        paid_before = [0.0, *accumulate(float(x) for x in paid)]
        mine: dict[int, float] = {}
        chosen: dict[int, float] = {}
        for j, value in ends.items():
            if unfinished_penalty and decode is not None and not ends_cleanly(decode(r.response_ids[:j])):
                value -= unfinished_penalty
            mine[j] = value - paid_before[j]
            if value >= bar:
                chosen[j] = value
        values.append(mine)
        stops.append(frozenset(chosen))
        rule_scores.append(chosen[min(chosen)] if chosen else float(score))
    return StopTargets(values, stops, rule_scores)
