"""Learning a user's weights from pairwise choices, and choosing the next pair to ask about.

The model (Bradley-Terry on reward differences): a user prefers answer ``a`` to answer ``b``
with probability

    P(a > b) = sigmoid(sum_k u_k · (r_k(a) - r_k(b)))

``u_k`` is the user's utility per unit of objective k's reward (reward units). Each objective's
differences are divided by their spread ``s_k`` before the fit, so the fitted coefficients
``theta_k = u_k · s_k`` are per "typical difference" and one objective with wide rewards cannot
dominate the prior or the step sizes. The fit is the MAP under a Gaussian prior
``theta ~ N(theta_0, I / l2)`` (``theta_0`` the current profile, as a utility direction, or zero)
found by Newton's method (the loss is convex); the Laplace approximation (the inverse Hessian at
the MAP) gives the posterior covariance, hence standard errors.

Units. The decoder adds ``beta · sum_k w_k · Q_k / scale_k`` (DESIGN §1: ``scale_k`` the head's
calibration scale), and the KL-optimal policy for the utility ``sum_k u_k r_k`` adds a multiple
of ``sum_k u_k · Q_k``: the decoder weights that realise ``u`` are ``w_k ∝ u_k · scale_k``
(:func:`decoder_weights`), and a weight vector means the utility ``u_k ∝ w_k / scale_k``
(:func:`utility_of_weights`).

Duels. The next pair to ask about is chosen from the *actual* rewards of a few candidate answers
(generated with weights spread along the least known directions, :func:`candidate_weights`): the pair
whose choice is expected to shrink the error of the utility's direction the most
(:func:`most_informative_pair`). Two
answers' reward differences are mostly sampling noise, so which weights made them says little about
the difference the user will actually see.

Pure numpy: no database, no model; every function is deterministic given its ``rng``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from personalize.decoding.config import WEIGHT_RANGE
from personalize.errors import ConfigError

Array = npt.NDArray[np.float64]
TIE_TOLERANCE = 0.05
"""Eigenvalues within this fraction of the largest count as tied: the duel direction is drawn among them."""


@dataclass(frozen=True)
class FitConfig:
    """How strongly the fit leans on its prior, and how it normalises each objective's differences."""

    l2: float = 1.0
    """Precision of the Gaussian prior on the normalised coefficients (1.0: worth a few comparisons)."""
    prior_strength: float = 1.0
    """Length of the prior mean in normalised units when it comes from a profile (0: always zero)."""
    pseudo_count: float = 2.0
    """How many comparisons' worth of the fallback spread the user's own spread is shrunk toward."""
    max_iterations: int = 50
    tolerance: float = 1e-9

    def __post_init__(self) -> None:
        for name in ("l2", "pseudo_count", "tolerance"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"FitConfig.{name} must be a finite number > 0, got {value!r}")
        if not np.isfinite(self.prior_strength) or self.prior_strength < 0:
            raise ConfigError(f"FitConfig.prior_strength must be a finite number >= 0, got {self.prior_strength!r}")
        if self.max_iterations < 1:
            raise ConfigError(f"FitConfig.max_iterations must be >= 1, got {self.max_iterations}")


@dataclass(frozen=True)
class UtilityFit:
    """The MAP utility of one user and its Laplace posterior."""

    objectives: tuple[str, ...]
    comparisons: int
    spread: Array
    """(K,) the reward-difference spread each objective was divided by (reward units)."""
    theta: Array
    """(K,) MAP coefficients per unit of normalised difference."""
    covariance: Array
    """(K, K) Laplace posterior covariance of ``theta`` (inverse Hessian at the MAP)."""
    utility: Array
    """(K,) utility per unit of reward, scaled to unit length (zeros when the fit is zero)."""
    stderr: Array
    """(K,) standard errors of ``utility`` (same units; to first order in the normalisation)."""

    @property
    def raw_utility(self) -> Array:
        """(K,) ``theta / spread``: utility per unit of reward, before scaling to unit length."""
        return self.theta / self.spread


class PairChoice(NamedTuple):
    """The most informative pair among candidate answers, and how informative it is."""

    first: int
    """Index of one answer of the pair among the candidates."""
    second: int
    """Index of the other (``first < second``)."""
    gain: float
    """How much the choice is expected to shrink the squared angular error of the utility's direction
    (reward units, radians², to first order; :func:`pair_gain`)."""
    variance: float
    """``xᵀ Σ x``: posterior variance of the utility difference between the two answers (``x = d / spread``)."""
    probability: float
    """Predicted probability that the user prefers ``first`` (the Laplace posterior's, moderated)."""


class PairScores(NamedTuple):
    gain: Array
    """(M,) expected drop of the squared angular error of the utility's direction (radians², first order)."""
    variance: Array
    """(M,) posterior variance of the utility difference between the two answers (``xᵀ Σ x``)."""
    probability: Array
    """(M,) predicted probability that the user prefers the first answer of each pair."""


class MapEstimate(NamedTuple):
    theta: Array
    """(K,) the MAP coefficients."""
    hessian: Array
    """(K, K) the loss's Hessian there."""


class Direction(NamedTuple):
    vector: Array
    """(K,) unit direction in normalised units."""
    variance: float
    """Posterior variance along it."""


def _as_matrix(differences: Sequence[Sequence[float]] | Array, k: int) -> Array:
    matrix = np.asarray(differences, dtype=np.float64).reshape(-1, k)  # (N, K)
    if not np.all(np.isfinite(matrix)):
        raise ConfigError("reward differences must be finite numbers")
    return matrix


def difference_spread(differences: Array, fallback: Array, pseudo_count: float) -> Array:
    """(K,) root-mean-square of each objective's differences, shrunk toward ``fallback`` by
    ``pseudo_count`` comparisons' worth (so one or two comparisons give a sane scale); 1 where both are 0."""
    n = differences.shape[0]
    fallback = np.where(np.isfinite(fallback) & (fallback > 0), fallback, 0.0)
    mean_square = ((differences**2).sum(axis=0) + pseudo_count * fallback**2) / (n + pseudo_count)  # (K,)
    spread = np.sqrt(mean_square)
    return np.where(spread > 1e-12, spread, 1.0)


def prior_theta(prior_utility: Array | None, spread: Array, strength: float) -> Array:
    """The prior mean in normalised units: the direction of ``prior_utility`` (reward units) times ``strength``."""
    if prior_utility is None:
        return np.zeros_like(spread)
    theta0 = np.asarray(prior_utility, dtype=np.float64) * spread  # (K,)
    norm = float(np.linalg.norm(theta0))
    return theta0 / norm * strength if norm > 0 else np.zeros_like(spread)


def _sigmoid(x: Array) -> Array:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float64)


def map_estimate(features: Array, theta0: Array, config: FitConfig) -> MapEstimate:
    """Newton's method on ``-sum log sigmoid(X theta) + l2/2 |theta - theta0|^2``: (MAP, Hessian there)."""
    k = theta0.shape[0]
    theta = theta0.copy()
    hessian = config.l2 * np.eye(k)
    for _ in range(config.max_iterations):
        p = _sigmoid(features @ theta)  # (N,)
        gradient = -features.T @ (1.0 - p) + config.l2 * (theta - theta0)  # (K,)
        hessian = (features.T * (p * (1.0 - p))) @ features + config.l2 * np.eye(k)  # (K, K)
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if float(np.abs(step).max(initial=0.0)) < config.tolerance:
            break
    p = _sigmoid(features @ theta)
    hessian = (features.T * (p * (1.0 - p))) @ features + config.l2 * np.eye(k)
    return MapEstimate(theta, hessian)


def fit_utility(
    objectives: Sequence[str],
    differences: Sequence[Sequence[float]] | Array,
    *,
    fallback_spread: Sequence[float] | Array | None = None,
    prior_utility: Sequence[float] | Array | None = None,
    config: FitConfig | None = None,
) -> UtilityFit:
    """Fit a user's utility from comparisons.

    ``differences``: (N, K) reward of the chosen answer minus reward of the rejected one, per objective
    (0 where an objective was not scored). ``fallback_spread``: (K,) a typical difference per objective
    (e.g. sqrt(2) x the reward's std) for when the user has few comparisons. ``prior_utility``: (K,)
    the utility the fit is pulled toward (reward units; only its direction counts), or None for zero.
    """
    config = config or FitConfig()
    names = tuple(objectives)
    k = len(names)
    if k == 0:
        raise ConfigError("fit_utility needs at least one objective")
    matrix = _as_matrix(differences, k)  # (N, K)
    fallback = np.ones(k) if fallback_spread is None else np.asarray(fallback_spread, dtype=np.float64)
    spread = difference_spread(matrix, fallback, config.pseudo_count)  # (K,)
    prior = None if prior_utility is None else np.asarray(prior_utility, dtype=np.float64)
    theta0 = prior_theta(prior, spread, config.prior_strength)
    theta, hessian = map_estimate(matrix / spread, theta0, config)
    covariance = np.asarray(np.linalg.inv(hessian), dtype=np.float64)  # (K, K)
    raw = theta / spread
    norm = float(np.linalg.norm(raw))
    raw_stderr = np.sqrt(np.diag(covariance)) / spread
    utility = raw / norm if norm > 0 else np.zeros(k)
    stderr = raw_stderr / norm if norm > 0 else raw_stderr
    return UtilityFit(names, matrix.shape[0], spread, theta, covariance, utility, stderr)


def decoder_weights(
    utility: Array, head_scales: Array, strength: float, bound: tuple[float, float] = WEIGHT_RANGE
) -> Array:
    """(K,) decoder weights realising ``utility`` (``w_k ∝ u_k · scale_k``), of L2 length ``strength``,
    clipped to ``bound``; zeros for a zero utility."""
    weights = np.asarray(utility, dtype=np.float64) * np.asarray(head_scales, dtype=np.float64)  # (K,)
    norm = float(np.linalg.norm(weights))
    if norm == 0:
        return np.zeros_like(weights)
    return np.clip(weights / norm * strength, bound[0], bound[1])


def utility_of_weights(weights: Array, head_scales: Array) -> Array:
    """(K,) the utility direction (reward units) that decoder ``weights`` realise: ``w_k / scale_k``."""
    return np.asarray(weights, dtype=np.float64) / np.asarray(head_scales, dtype=np.float64)


def direction_covariance(fit: UtilityFit) -> Array:
    """(K, K) posterior covariance of the utility's *direction* in reward units: the Laplace covariance
    carried to ``u = theta / spread`` with the radial part (how strong, which choices cannot tell and
    decoding does not use) projected out."""
    inverse = np.diag(1.0 / fit.spread)
    covariance = inverse @ fit.covariance @ inverse  # (K, K) of u
    across = _across(fit.raw_utility)  # the identity for a zero utility
    return np.asarray(across @ covariance @ across, dtype=np.float64)


def uncertain_direction(covariance: Array, rng: np.random.Generator) -> Direction:
    """The top eigenvector of ``covariance``;
    among eigenvalues tied with the largest (within TIE_TOLERANCE), a random unit combination."""
    values, vectors = np.linalg.eigh(covariance)  # ascending
    tied = values >= values[-1] * (1.0 - TIE_TOLERANCE)
    basis = vectors[:, tied]  # (K, T)
    direction = basis @ rng.standard_normal(basis.shape[1])
    direction = direction / np.linalg.norm(direction)
    return Direction(direction, float(direction @ covariance @ direction))


def uncertain_directions(covariance: Array, count: int, rng: np.random.Generator) -> list[Direction]:
    """Up to ``count`` orthogonal directions, most uncertain first: :func:`uncertain_direction`, then the
    same on the covariance with the directions found so far projected out (at most K of them)."""
    k = covariance.shape[0]
    found: list[Direction] = []
    remaining = covariance
    for _ in range(min(count, k)):
        if float(np.abs(remaining).max(initial=0.0)) <= 1e-15 * max(float(np.abs(covariance).max()), 1e-300):
            break
        direction = uncertain_direction(remaining, rng)
        found.append(direction)
        across = np.eye(k) - np.outer(direction.vector, direction.vector)
        remaining = across @ remaining @ across
    return found


def candidate_weights(
    fit: UtilityFit,
    center: Array,
    count: int,
    *,
    step: float = 1.0,
    rng: np.random.Generator,
    bound: tuple[float, float] = WEIGHT_RANGE,
) -> Array:
    """(C, K) decoder weights to generate the candidate answers of a duel with: ``center ± step · d_i``
    along the directions the posterior of the utility's direction is least sure of (most uncertain first;
    ``center`` itself first when ``count`` is odd). With more pairs than objectives the directions are
    reused at 2, 3, ... times the step.

    ``v_i`` are directions in reward units (:func:`direction_covariance`); heads are calibrated so that a
    unit weight moves each objective's reward by a similar share of its spread, so the decoder direction
    that moves the rewards along ``v_i`` is ``d_i ∝ v_i / spread``. Which pair is asked about is decided
    afterwards from the answers' actual rewards (:func:`most_informative_pair`): sampling noise moves two
    answers' rewards further apart than nearby weights do."""
    if count < 2:
        raise ConfigError(f"a duel needs at least 2 candidate answers, got {count}")
    if step <= 0:
        raise ConfigError(f"duel step must be > 0, got {step}")
    center = np.asarray(center, dtype=np.float64)
    rows = [center] if count % 2 else []
    found = uncertain_directions(direction_covariance(fit), count // 2, rng)
    if not found:  # a zero covariance (cannot happen with l2 > 0): any directions
        found = [Direction(v, 0.0) for v in np.eye(len(center))]
    for i in range(count // 2):
        decoder = found[i % len(found)].vector / fit.spread  # (K,) decoder units
        decoder = decoder / np.linalg.norm(decoder) * step * (1 + i // len(found))
        rows += [center + decoder, center - decoder]
    return np.clip(np.array(rows), bound[0], bound[1])  # (C, K)


def pair_gain(fit: UtilityFit, differences: Sequence[Sequence[float]] | Array) -> PairScores:
    """How much a choice about each of ``differences`` would teach ((M, K): one answer's rewards minus
    the other's, reward units, the fit's objectives).

    A choice about a difference ``d`` adds ``c · x xᵀ`` to the posterior precision (``x = d / spread``,
    ``c = p(1-p)``, ``p`` the predicted choice probability), so the Laplace covariance becomes
    ``Σ - c Σx xᵀΣ / (1 + c xᵀΣx)``. Only the utility's direction steers decoding, and it is judged in
    reward units (``u = theta / spread``), so the gain is the expected drop of its squared angular error
    there, ``trace(P D Σ D P) / |u|²`` (``D = diag(1 / spread)``, ``P`` the projector across ``u``):

        gain = c · |P D Σ x|² / (1 + c · xᵀΣx) / |u|²

    large when the choice would settle the direction where the posterior is least sure of it *and* the user
    is not sure to answer one way; zero for a pair that would only tell how strongly the user cares (along
    ``u``). ``p`` is the posterior's predictive probability (the probit approximation to the Gaussian
    average of the sigmoid). Before any choice (a zero estimate) the gain is the drop of the whole
    ``trace(D Σ D)``."""
    d = _as_matrix(differences, len(fit.objectives))  # (M, K)
    x = d / fit.spread  # (M, K) normalised
    covariance_x = x @ fit.covariance  # (M, K) rows Σx
    variance = np.einsum("mk,mk->m", x, covariance_x)  # (M,) xᵀΣx
    p = _sigmoid((x @ fit.theta) / np.sqrt(1.0 + np.pi * variance / 8.0))  # (M,)
    c = p * (1.0 - p)  # (M,)
    utility = fit.raw_utility  # (K,) reward units
    length_squared = float(utility @ utility)
    moved = (covariance_x / fit.spread) @ _across(utility)  # (M, K) rows P D Σx (P symmetric)
    gain = c * np.einsum("mk,mk->m", moved, moved) / (1.0 + c * variance)  # (M,)
    if length_squared > 0:
        gain = gain / length_squared
    return PairScores(gain, variance, p)


def _across(theta: Array) -> Array:
    """(K, K) the projector orthogonal to ``theta`` (the identity for a zero ``theta``)."""
    norm = float(np.linalg.norm(theta))
    if norm == 0:
        return np.eye(len(theta))
    unit = theta / norm
    return np.eye(len(theta)) - np.outer(unit, unit)


def most_informative_pair(
    fit: UtilityFit, rewards: Sequence[Sequence[float]] | Array, exclude: Collection[tuple[int, int]] = ()
) -> PairChoice:
    """Of ``C`` candidate answers with these (C, K) rewards (reward units, the fit's objectives), the pair
    whose choice is expected to teach the fit the most (:func:`pair_gain`; the first on ties), other than
    the pairs in ``exclude`` (index pairs, either order; e.g. pairs already asked about) unless every pair is."""
    matrix = _as_matrix(rewards, len(fit.objectives))  # (C, K)
    count = matrix.shape[0]
    if count < 2:
        raise ConfigError(f"choosing a pair needs at least 2 candidate answers, got {count}")
    first, second = np.triu_indices(count, k=1)  # (M,) each
    scores = pair_gain(fit, matrix[first] - matrix[second])
    allowed = np.ones(count * count, dtype=bool)  # flat (row, column), row < column used
    for a, b in exclude:
        if min(a, b) >= 0 and max(a, b) < count:
            allowed[min(a, b) * count + max(a, b)] = False
    allowed = allowed[first * count + second]  # (M,)
    best = int(np.argmax(np.where(allowed, scores.gain, -np.inf))) if allowed.any() else int(np.argmax(scores.gain))
    return PairChoice(
        int(first[best]),
        int(second[best]),
        float(scores.gain[best]),
        float(scores.variance[best]),
        float(scores.probability[best]),
    )


def cosine(a: Array, b: Array) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
