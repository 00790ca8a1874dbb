"""Per-action rewards for TD(lambda): the final reward alone, or shaped by the reward of each prefix.

A reward paid only at the last token leaves the head to find, from a few hundred
responses, which of ~200 tokens made a response score well: for a lexical signal such
as sentiment, the credit for "wonderful" arrives 150 tokens later, diluted by every
other token's noise. Potential-based shaping (Ng, Harada and Russell, 1999) pays each
action the change it makes to a potential ``phi`` of the text so far::

    r_t = phi(prefix after a_t) - phi(prefix before a_t)        (t < last action)
    r_last = R - phi(prefix before the last action)

The rewards of a response still sum to its final reward ``R`` (so returns and their
calibration are unchanged in total), and the learned ``Q(s, a)`` differs from the
unshaped one by ``phi(s)``, a function of the state alone: centring over the top-k
candidates at ``s`` (DESIGN.md §1) removes it, so guidance ranks tokens the same way
in expectation while the credit lands on the token that earned it. Here ``phi`` is
the objective's own reward function scored on response prefixes, through its
``prefix_score`` where it has one (:func:`personalize.rewards.base.prefix_scorer`: the
``helpful`` reward leaves out its penalty for an unfinished answer); ``phi`` of the empty
prefix is taken as 0 (a per-prompt constant, which centring also removes).

``sentence`` mode scores the prefix only where it ends a sentence or a line (plus the
final response), so rewards that penalise half-finished text ("dangling" answers) are
not charged and refunded at every other token, and scoring costs ~10 calls per response
instead of one per token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from personalize.errors import ConfigError
from personalize.rewards.base import PrefixScoreFn, RewardFunction, prefix_scorer
from personalize.rewards.text import ends_cleanly
from personalize.training.config import SHAPING_MODES, ShapingMode
from personalize.training.rollouts import Rollout, actions

__all__ = ["SHAPING_MODES", "ShapingMode", "charge_unfinished", "shaped_rewards", "sparse_rewards"]
_SENTENCE_END = frozenset(".!?\n:。！？")


def sparse_rewards(rollouts: Sequence[Rollout], scores: Sequence[float], eos: int) -> list[list[float]]:
    """The final reward on each response's last action, 0 elsewhere."""
    out = []
    for rollout, score in zip(rollouts, scores, strict=True):
        rewards = [0.0] * len(actions(rollout, eos))
        if rewards:
            rewards[-1] = float(score)
        out.append(rewards)
    return out


def charge_unfinished(
    rollouts: Sequence[Rollout],
    scores: Sequence[float],
    action_rewards: Sequence[Sequence[float]] | None,
    penalty: float,
) -> tuple[list[float], list[list[float]] | None]:
    """``scores`` less ``penalty`` for each rollout whose response stops mid-sentence (it does not
    end on sentence-final punctuation, a closing quote or bracket, or an emoji:
    :func:`personalize.rewards.text.ends_cleanly`), whether the token limit cut it or the policy
    stopped there; the same charge lands on the last action of its per-action rewards when they are
    given, so they still sum to its score."""
    charge = [0.0 if ends_cleanly(r.response) else penalty for r in rollouts]
    charged = [float(s) - c for s, c in zip(scores, charge, strict=True)]
    if action_rewards is None:
        return charged, None
    paid = [list(r) for r in action_rewards]
    for rewards, c in zip(paid, charge, strict=True):
        if rewards:  # an empty response has one action (its EOS) when it stopped, none only if cut at 0
            rewards[-1] -= c
    return charged, paid


def _cut_points(rollout: Rollout, mode: ShapingMode, piece: Callable[[int], str]) -> list[int]:
    """Response token indices after which the prefix is scored (the last token is scored as ``R``).

    ``sentence``: where the prefix, trailing spaces and tabs aside, ends with sentence-final
    punctuation, a colon or a line break. Found from each token's own text (``piece``)
    rather than by decoding every prefix, which costs O(n^2) per response.
    """
    n = len(rollout.response_ids)
    if mode == "token":
        return list(range(n - 1))
    cuts = []
    last = ""  # the last character of the prefix that is not a space or a tab
    for t in range(n - 1):
        text = piece(rollout.response_ids[t]).rstrip(" \t")
        if text:
            last = text[-1]
        if last in _SENTENCE_END:
            cuts.append(t)
    return cuts


def sentence_ends(rollout: Rollout, piece: Callable[[int], str]) -> list[int]:
    """Response token indices ``t`` (the last token aside) after which the response so far ends a
    sentence or a line; ``piece`` gives a token's own text (:func:`token_pieces`)."""
    return _cut_points(rollout, "sentence", piece)


def token_pieces(decode: Callable[[Sequence[int]], str]) -> Callable[[int], str]:
    """Each token's own text, decoded once."""
    pieces: dict[int, str] = {}

    def piece(token: int) -> str:
        if token not in pieces:
            pieces[token] = decode([token])
        return pieces[token]

    return piece


def score_prefixes(
    rollouts: Sequence[Rollout],
    cuts: Sequence[Sequence[int]],
    score: PrefixScoreFn,
    decode: Callable[[Sequence[int]], str],
    *,
    batch_size: int = 256,
    on_scored: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], float]:
    """``score(prompts, prefixes)`` (a reward or its prefix score) of rollout ``i``'s response up to and
    including token ``t``, for each ``t`` in ``cuts[i]``, in batches; keyed by ``(i, t)``.
    ``on_scored(n)`` reports progress after each batch of ``n`` prefixes."""
    jobs = [(i, t) for i, points in enumerate(cuts) for t in points]
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        prompts = [rollouts[i].prompt for i, _ in chunk]
        texts = [decode(rollouts[i].response_ids[: t + 1]) for i, t in chunk]
        values = score(prompts, texts).float().tolist()
        out.update(zip(chunk, (float(v) for v in values), strict=True))
        if on_scored is not None:
            on_scored(len(chunk))
    return out


def shaped_rewards(
    rollouts: Sequence[Rollout],
    scores: Sequence[float],
    reward: RewardFunction,
    decode: Callable[[Sequence[int]], str],
    eos: int,
    *,
    mode: ShapingMode = "sentence",
    batch_size: int = 256,
    on_scored: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Per-action rewards shaped by ``reward`` on response prefixes (module docstring).

    ``decode`` turns response token ids into text as the rollouts' ``response`` was made;
    ``on_scored(n)`` reports progress after each batch of ``n`` prefixes.
    """
    if mode not in SHAPING_MODES:
        raise ConfigError(f"shaping must be one of {', '.join(SHAPING_MODES)}, got {mode!r}")
    if len(rollouts) != len(scores):
        raise ConfigError(f"need one score per rollout, got {len(rollouts)} rollouts and {len(scores)} scores")
    if mode == "none":
        return sparse_rewards(rollouts, scores, eos)
    piece = token_pieces(decode)
    cuts = [_cut_points(r, mode, piece) for r in rollouts]
    potentials = score_prefixes(
        rollouts, cuts, prefix_scorer(reward), decode, batch_size=batch_size, on_scored=on_scored
    )
    out = []
    for i, (rollout, score) in enumerate(zip(rollouts, scores, strict=True)):
        rewards = [0.0] * len(actions(rollout, eos))
        previous = 0.0
        for t in cuts[i]:
            rewards[t] = potentials[(i, t)] - previous
            previous = potentials[(i, t)]
        if rewards:
            rewards[-1] += float(score) - previous  # the last action (EOS when it stopped) settles to R
        out.append(rewards)
    return out
