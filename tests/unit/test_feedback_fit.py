"""The preference fit: recovers known utilities from synthetic choices; units; duel candidates and pairs."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.errors import ConfigError
from personalize.feedback import (
    FitConfig,
    UtilityFit,
    candidate_weights,
    cosine,
    decoder_weights,
    fit_utility,
    most_informative_pair,
    pair_gain,
    utility_of_weights,
)

OBJECTIVES = ("concise", "helpful", "harmless", "positive")
SPREADS = np.array([0.25, 0.4, 0.3, 0.75])  # reward-difference spreads, deliberately unequal


def simulate(utility: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K) chosen-minus-rejected differences of a user choosing by ``utility`` with logistic noise."""
    pairs = rng.standard_normal((n, len(utility))) * SPREADS  # (n, K) a - b
    margin = pairs @ utility
    temperature = 0.5 * margin.std()
    prefers_a = rng.random(n) < 1.0 / (1.0 + np.exp(-margin / temperature))
    return np.where(prefers_a[:, None], pairs, -pairs)


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_recovers_a_known_utility(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal(4)
    hidden /= np.linalg.norm(hidden)
    fit = fit_utility(OBJECTIVES, simulate(hidden, 600, rng), fallback_spread=SPREADS)
    assert fit.comparisons == 600
    assert np.linalg.norm(fit.utility) == pytest.approx(1.0)
    assert cosine(fit.utility, hidden) > 0.95
    assert np.all(np.abs(fit.utility - hidden) < 4 * fit.stderr)  # the Laplace errors are honest


def test_more_comparisons_shrink_the_standard_errors() -> None:
    rng = np.random.default_rng(7)
    hidden = np.array([0.0, 1.0, 0.0, 0.0])
    diffs = simulate(hidden, 400, rng)
    few = fit_utility(OBJECTIVES, diffs[:20], fallback_spread=SPREADS)
    many = fit_utility(OBJECTIVES, diffs, fallback_spread=SPREADS)
    assert np.all(many.stderr < few.stderr)


def test_without_comparisons_the_fit_is_its_prior() -> None:
    zero = fit_utility(OBJECTIVES, np.zeros((0, 4)), fallback_spread=SPREADS)
    assert np.all(zero.utility == 0)
    prior = np.array([1.0, 0.0, 0.0, 1.0])
    anchored = fit_utility(OBJECTIVES, np.zeros((0, 4)), fallback_spread=SPREADS, prior_utility=prior)
    assert cosine(anchored.utility, prior) == pytest.approx(1.0)


def test_a_noisy_objective_with_wide_rewards_does_not_dominate() -> None:
    rng = np.random.default_rng(3)
    hidden = np.array([1.0, 0.0, 0.0, 0.0])
    diffs = simulate(hidden, 100, rng)
    diffs[:, 3] = rng.standard_normal(100) * 50.0  # unrelated to the choices, 50x wider
    fit = fit_utility(OBJECTIVES, diffs, fallback_spread=SPREADS)
    assert cosine(fit.utility, hidden) > 0.9


def test_decoder_weights_carry_utility_through_the_head_scales() -> None:
    scales = np.array([0.01, 0.02, 0.015, 0.04])
    utility = np.array([1.0, 1.0, 0.0, 0.0]) / np.sqrt(2)
    weights = decoder_weights(utility, scales, strength=1.0)
    assert weights[1] == pytest.approx(2 * weights[0]) and weights[2] == 0
    assert np.linalg.norm(weights) == pytest.approx(1.0)
    assert cosine(utility_of_weights(weights, scales), utility) == pytest.approx(1.0)
    assert np.all(decoder_weights(utility, scales, strength=100.0) <= 5.0)  # clipped to the valid range


def test_candidates_differ_along_the_least_known_directions() -> None:
    rng = np.random.default_rng(0)
    diffs = np.zeros((30, 4))
    diffs[:, :3] = simulate(np.array([1.0, 1.0, 1.0, 0.0]), 30, rng)[:, :3]  # objective 3 never varied
    fit = fit_utility(OBJECTIVES, diffs, fallback_spread=SPREADS)
    center = np.array([0.2, 0.2, 0.2, 0.0])
    weights = candidate_weights(fit, center, 4, step=1.0, rng=rng)  # (4, K)
    assert weights.shape == (4, 4) and len({tuple(row) for row in weights}) == 4
    first = (weights[0] - weights[1]) / 2  # the most uncertain direction, at unit step
    assert abs(first[3]) > 0.9 and np.linalg.norm(first) == pytest.approx(1.0)
    assert np.allclose((weights[0] + weights[1]) / 2, center)
    second = (weights[2] - weights[3]) / 2
    assert abs(cosine(first * SPREADS, second * SPREADS)) < 1e-6  # orthogonal in reward units
    odd = candidate_weights(fit, center, 3, step=1.0, rng=rng)
    assert np.allclose(odd[0], center)  # an odd count starts with the profile itself
    with pytest.raises(ConfigError):
        candidate_weights(fit, center, 1, rng=rng)


def synthetic_fit(theta: np.ndarray, covariance: np.ndarray, spread: np.ndarray | None = None) -> UtilityFit:
    k = len(theta)
    spread = np.ones(k) if spread is None else spread
    utility = theta / spread
    return UtilityFit(OBJECTIVES[:k], 10, spread, theta, covariance, utility / np.linalg.norm(utility), np.ones(k))


def test_the_chosen_pair_is_the_most_informative_among_candidates() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    covariance = basis @ np.diag([0.02, 0.1, 0.5, 2.0]) @ basis.T  # (K, K) a posterior sure of some directions
    fit = synthetic_fit(np.array([1.5, -0.5, 0.3, 0.8]), covariance, spread=SPREADS)
    rewards = rng.standard_normal((7, 4)) * SPREADS  # (C, K) seven candidate answers
    pair = most_informative_pair(fit, rewards)
    utility = fit.theta / SPREADS  # reward units
    across = np.eye(4) - np.outer(utility, utility) / (utility @ utility)  # only the direction steers
    to_reward = np.diag(1.0 / SPREADS)

    def direction_error(sigma: np.ndarray) -> float:
        """Expected squared angular error of the direction in reward units (first order)."""
        return float(np.trace(across @ to_reward @ sigma @ to_reward @ across) / (utility @ utility))

    scores = {}
    for i in range(7):
        for j in range(i + 1, 7):
            x = (rewards[i] - rewards[j]) / SPREADS
            variance = x @ covariance @ x
            p = 1.0 / (1.0 + np.exp(-(x @ fit.theta) / np.sqrt(1.0 + np.pi * variance / 8.0)))
            after = np.linalg.inv(np.linalg.inv(covariance) + p * (1.0 - p) * np.outer(x, x))  # one more choice
            scores[i, j] = direction_error(covariance) - direction_error(after)
    assert (pair.first, pair.second) == max(scores, key=lambda key: scores[key])
    assert pair.gain == pytest.approx(max(scores.values()))
    x = (rewards[pair.first] - rewards[pair.second]) / SPREADS
    assert pair.variance == pytest.approx(float(x @ covariance @ x))


def test_an_uncertain_pair_beats_a_known_one_and_a_foregone_one() -> None:
    fit = synthetic_fit(np.array([4.0, 0.0]), np.diag([0.05, 1.0]))
    uncertain, known, foregone = np.array([0.0, 1.0]), np.array([0.3, 0.0]), np.array([3.0, 1.0])
    scores = pair_gain(fit, np.array([uncertain, known, foregone]))
    assert scores.gain[0] > scores.gain[1]  # the posterior already knows the first objective
    assert scores.variance[2] > scores.variance[0]  # the most uncertain difference ...
    assert scores.gain[0] > scores.gain[2]  # ... but the user is sure to pick the first answer
    assert scores.probability[2] > 0.99
    pair = most_informative_pair(fit, np.array([[0.0, 0.0], uncertain, known]))
    assert (pair.first, pair.second) == (0, 1) and pair.probability == pytest.approx(0.5)


def test_excluded_pairs_are_skipped_unless_every_pair_is() -> None:
    fit = synthetic_fit(np.array([1.0, 0.0]), np.diag([2.0, 0.5]))
    rewards = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [0.0, 0.2]])  # (C, K); (0, 2) teaches the most
    assert most_informative_pair(fit, rewards)[:2] == (0, 2)
    second_best = most_informative_pair(fit, rewards, exclude=[(2, 0)])  # either order
    assert second_best[:2] == (1, 2)
    assert most_informative_pair(fit, rewards, exclude=[(0, 2), (1, 2)])[:2] not in {(0, 2), (1, 2)}
    every = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert most_informative_pair(fit, rewards, exclude=every)[:2] == (0, 2)  # all asked: the best again


def test_a_pair_that_only_tells_how_strongly_the_user_cares_teaches_nothing() -> None:
    """Along the estimate, a choice would only pin down the utility's length, which decoding does not use:
    a smaller difference across it is worth more, though its utility difference is less uncertain."""
    fit = synthetic_fit(np.array([1.0, 0.0]), np.diag([2.0, 0.5]))
    along, across = np.array([1.0, 0.0]), np.array([0.0, 0.5])
    scores = pair_gain(fit, np.array([along, across]))
    assert scores.variance[0] > scores.variance[1]
    assert scores.gain[0] == pytest.approx(0.0, abs=1e-12) and scores.gain[1] > 0.01
    pair = most_informative_pair(fit, np.array([[0.0, 0.0], along, across]))
    assert (pair.first, pair.second) == (0, 2)


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        fit_utility((), np.zeros((1, 0)))
    with pytest.raises(ConfigError):
        fit_utility(OBJECTIVES, [[np.nan, 0, 0, 0]])
    with pytest.raises(ConfigError):
        FitConfig(l2=0)


def test_candidates_are_steered_across_the_estimate_not_along_it() -> None:
    rng = np.random.default_rng(1)
    hidden = np.array([0.0, 0.0, 0.0, 1.0])
    fit = fit_utility(OBJECTIVES, simulate(hidden, 200, rng), fallback_spread=SPREADS)
    weights = candidate_weights(fit, np.zeros(4), 4, step=1.0, rng=rng)
    for a, b in ((0, 1), (2, 3)):
        assert abs(cosine(weights[a] - weights[b], fit.utility)) < 0.2  # the direction, not the strength
