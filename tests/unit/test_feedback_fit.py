"""The preference fit: recovers known utilities from synthetic choices; units; duel directions."""

from __future__ import annotations

import numpy as np
import pytest

from personalize.errors import ConfigError
from personalize.feedback import (
    FitConfig,
    cosine,
    decoder_weights,
    duel_weights,
    fit_utility,
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


def test_duels_differ_along_the_least_known_direction() -> None:
    rng = np.random.default_rng(0)
    diffs = np.zeros((30, 4))
    diffs[:, :3] = simulate(np.array([1.0, 1.0, 1.0, 0.0]), 30, rng)[:, :3]  # objective 3 never varied
    fit = fit_utility(OBJECTIVES, diffs, fallback_spread=SPREADS)
    duel = duel_weights(fit, np.zeros(4), step=1.0, rng=rng)
    assert abs(duel.direction[3]) > 0.9
    assert np.allclose(duel.left - duel.right, 2 * duel.direction)


def test_bad_inputs_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        fit_utility((), np.zeros((1, 0)))
    with pytest.raises(ConfigError):
        fit_utility(OBJECTIVES, [[np.nan, 0, 0, 0]])
    with pytest.raises(ConfigError):
        FitConfig(l2=0)


def test_duels_ask_about_the_direction_not_the_strength() -> None:
    rng = np.random.default_rng(1)
    hidden = np.array([0.0, 0.0, 0.0, 1.0])
    fit = fit_utility(OBJECTIVES, simulate(hidden, 200, rng), fallback_spread=SPREADS)
    duel = duel_weights(fit, np.zeros(4), step=1.0, rng=rng)
    assert abs(cosine(duel.direction, fit.utility)) < 0.2  # across the estimate, not along it
