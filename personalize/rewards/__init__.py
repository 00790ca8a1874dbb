"""Reward functions: score finished responses for one objective each, by name.

A reward follows :class:`RewardFunction`: ``reward(prompts, responses)`` returns a
float32 tensor of shape ``(N,)``; it is batched, offline and deterministic, and has a
``name``, a ``description`` and a ``value_range``. Value-head training scores rollouts
with one reward; Best-of-N scores candidates with :func:`weighted_reward`.

Built-in rewards (see each class for the formula):

    concise    ConciseReward    [0, 1]   short, complete, on-topic answers
    helpful    HelpfulReward    [-1, 1]  relevance minus refusal/empty/dangling penalties
    harmless   HarmlessReward   [0, 1]   no profanity, insults, harmful instructions or offensive tone
    positive   PositiveReward   [-1, 1]  VADER sentiment
    hf:<dir>   HFReward         logit    a local safetensors sequence-classification model

Beyond these: rewards published by installed packages in the ``personalize.rewards`` entry-point
group (by name), and ``module:function`` specs, imported by :func:`load_reward` only (a user's
typed spec; :func:`get_reward` never imports a module that a string names).

>>> from personalize.rewards import get_reward, register_reward
>>> register_reward("shouty", lambda prompts, responses: [r.count("!") for r in responses])
>>> get_reward("shouty")(["q"], ["hi!!"])
tensor([2.])

Heavy models (embedding model, reward models) load on first use and are cached: the
same name and options return the same object.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch

from personalize.errors import ConfigError, RewardError
from personalize.rewards.base import (
    UNBOUNDED,
    CallableReward,
    RewardFunction,
    ScoreFn,
    as_scores,
    check_batch,
)
from personalize.rewards.hf import HF_PREFIX
from personalize.rewards.sources import ENTRY_POINT_GROUP, entry_point, entry_point_names, import_reward, is_import_spec

__all__ = [
    "ENTRY_POINT_GROUP",
    "CallableReward",
    "RewardFunction",
    "WeightedReward",
    "available_rewards",
    "clear_reward_cache",
    "get_reward",
    "load_reward",
    "register_reward",
    "unregister_reward",
    "weighted_reward",
]

logger = logging.getLogger(__name__)

RewardFactory = Callable[..., RewardFunction]


def _concise(**options: Any) -> RewardFunction:
    from personalize.rewards.concise import ConciseReward

    return ConciseReward(**options)


def _helpful(**options: Any) -> RewardFunction:
    from personalize.rewards.helpful import HelpfulReward

    return HelpfulReward(**options)


def _harmless(**options: Any) -> RewardFunction:
    from personalize.rewards.harmless import HarmlessReward

    return HarmlessReward(**options)


def _positive(**options: Any) -> RewardFunction:
    from personalize.rewards.positive import PositiveReward

    return PositiveReward(**options)


def _hf(path: str, **options: Any) -> RewardFunction:
    from personalize.rewards.hf import HFReward

    return HFReward(path, **options)


BUILTIN_REWARDS: dict[str, RewardFactory] = {
    "concise": _concise,
    "helpful": _helpful,
    "harmless": _harmless,
    "positive": _positive,
}

_lock = threading.RLock()
_factories: dict[str, RewardFactory] = dict(BUILTIN_REWARDS)
_cache: dict[tuple[str, Hashable], RewardFunction] = {}


def available_rewards() -> list[str]:
    """Registered reward names and those installed packages publish, sorted (``hf:<dir>`` is accepted on top)."""
    with _lock:
        return sorted(set(_factories) | set(entry_point_names()))


def _is_score_fn(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` takes (prompts, responses) positionally, False for a factory."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True  # builtins without a signature: treat as a scorer
    positional = [
        p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _factory_for(
    name: str, reward: RewardFunction | RewardFactory | ScoreFn, description: str, value_range: tuple[float, float]
) -> RewardFactory:
    """How :func:`get_reward` builds ``reward``: a ready object, a wrapped scorer, or a keyword-only factory."""
    if not callable(reward):
        raise RewardError(f"reward {name!r} needs a callable, got {type(reward).__name__}")
    if isinstance(reward, RewardFunction):
        instance: RewardFunction = reward

        def ready(**options: Any) -> RewardFunction:
            if options:
                raise RewardError(f"reward {name!r} is a ready-made object and takes no options, got {sorted(options)}")
            return instance

        return ready
    if _is_score_fn(reward):
        wrapped = CallableReward(name, reward, description, value_range)

        def plain(**options: Any) -> RewardFunction:
            if options:
                raise RewardError(f"reward {name!r} is a plain callable and takes no options, got {sorted(options)}")
            return wrapped

        return plain
    return reward  # type: ignore[return-value]  # a keyword-only factory


def register_reward(
    name: str,
    reward: RewardFunction | RewardFactory | ScoreFn,
    *,
    description: str = "",
    value_range: tuple[float, float] = UNBOUNDED,
    replace: bool = False,
) -> None:
    """Make ``reward`` available as ``get_reward(name)``.

    ``reward`` is one of

    - a :class:`RewardFunction` object (has ``name``, ``description``, ``value_range``):
      returned as is;
    - a plain scoring callable ``(prompts, responses) -> scores`` (any tensor, array or
      list of N numbers): wrapped in :class:`CallableReward` with ``description`` and
      ``value_range``, its output checked and converted to float32;
    - a factory taking only keyword options and returning a RewardFunction: called by
      :func:`get_reward` with the options it receives (lazily, result cached).

    Raises RewardError for a bad name, a non-callable, or a name already registered
    (unless ``replace=True``).
    """
    if not name or not isinstance(name, str) or name.startswith(HF_PREFIX) or "=" in name:
        raise RewardError(
            f"invalid reward name {name!r}: use a non-empty string without '=' that does not start with {HF_PREFIX!r}"
        )
    if not callable(reward):
        raise RewardError(f"register_reward({name!r}, ...) needs a callable, got {type(reward).__name__}")
    factory = _factory_for(name, reward, description, value_range)
    with _lock:
        if name in _factories and not replace:
            raise RewardError(f"reward {name!r} is already registered; pass replace=True to override it")
        _factories[name] = factory
        for key in [k for k in _cache if k[0] == name]:
            del _cache[key]


def unregister_reward(name: str) -> None:
    """Remove a registered reward and its built instances; RewardError if not registered."""
    with _lock:
        if name not in _factories:
            raise RewardError(f"reward {name!r} is not registered; registered: {', '.join(sorted(_factories))}")
        del _factories[name]
        for key in [k for k in _cache if k[0] == name]:
            del _cache[key]


def clear_reward_cache() -> None:
    """Forget every built reward (the next get_reward builds anew)."""
    with _lock:
        _cache.clear()


def _cache_key(options: Mapping[str, Any]) -> Hashable | None:
    key = tuple(sorted(options.items()))
    try:
        hash(key)
    except TypeError:
        return None  # unhashable options (e.g. a tokenizer without __hash__): build each time
    return key


def _resolve(name: str) -> RewardFactory | None:
    """The factory for ``name``: registered, ``hf:<dir>``, or published by an installed package; else None.
    Never imports a module because ``name`` names it (that is :func:`load_reward`'s, for typed specs)."""
    if name in _factories:
        return _factories[name]
    if name.startswith(HF_PREFIX):
        path = name[len(HF_PREFIX) :]
        if not path:
            raise RewardError("reward name 'hf:' needs a directory: hf:<local model dir>")
        return lambda **o: _hf(path, **o)
    published = entry_point(name)
    return None if published is None else _factory_for(name, published, "", UNBOUNDED)  # type: ignore[arg-type]


def get_reward(name: str, **options: Any) -> RewardFunction:
    """The reward called ``name``, built with ``options`` on first use and cached.

    ``name`` is a registered name (see :func:`available_rewards`), ``hf:<dir>`` for a local
    safetensors sequence-classification model, or the name of a reward an installed package
    publishes in the ``personalize.rewards`` entry-point group. A ``module:function`` spec is
    found here only once :func:`load_reward` has imported it. Options go to the reward's
    constructor (e.g. ``get_reward("concise", tokenizer=tok, half_tokens=64)``).
    Raises RewardError for an unknown name or a reward that cannot be built.
    """
    if not isinstance(name, str):
        raise RewardError(f"reward name must be a str, got {type(name).__name__}")
    options_key = _cache_key(options)
    with _lock:
        if options_key is not None and (name, options_key) in _cache:
            return _cache[(name, options_key)]
        factory = _resolve(name)
        if factory is None:
            hint = " (a module:function reward is imported by load_reward, or --reward on the command line)"
            raise RewardError(
                f"unknown reward {name!r}; valid rewards: {', '.join(available_rewards())}, "
                f"or {HF_PREFIX}<local model dir>" + (hint if is_import_spec(name) else "")
            )
        reward = _build(name, factory, options)
        if options_key is not None:
            _cache[(name, options_key)] = reward
        return reward


def load_reward(spec: str, **options: Any) -> RewardFunction:
    """:func:`get_reward`, plus ``module:function``: the module is imported and the callable (a scorer
    ``(prompts, responses) -> one number per response``, a RewardFunction or a keyword-only factory)
    registered under ``spec``, so that later ``get_reward(spec)`` calls in this process find it.

    For specs a user typed (the command line, a notebook); a service resolving names it received
    must use :func:`get_reward`, which never imports a module a string names.
    """
    with _lock:
        known = spec in _factories or spec.startswith(HF_PREFIX) or not is_import_spec(spec)
    if not known and entry_point(spec) is None:
        register_reward(spec, import_reward(spec), description=f"custom reward {spec}")  # type: ignore[arg-type]
    return get_reward(spec, **options)


def _build(name: str, factory: RewardFactory, options: Mapping[str, Any]) -> RewardFunction:
    try:
        reward = factory(**options)
    except TypeError as exc:
        raise RewardError(f"cannot build reward {name!r} with options {sorted(options)}: {exc}") from exc
    if not isinstance(reward, RewardFunction):
        raise RewardError(
            f"the factory for reward {name!r} returned {type(reward).__name__}, "
            "not a RewardFunction (needs name, description, value_range and __call__)"
        )
    logger.debug("built reward %r (%s)", name, type(reward).__name__)
    return reward


class WeightedReward:
    """``sum_k w_k * reward_k(prompts, responses)``: one score for several objectives.

    Range: the sum of each term's range (a negative weight flips its term's bounds).
    Rewards with weight 0 are not evaluated.
    """

    def __init__(self, rewards: Mapping[str, tuple[float, RewardFunction]]) -> None:
        self.components = {name: weight for name, (weight, _) in rewards.items()}
        self._terms = [(w, r) for w, r in rewards.values() if w != 0.0]
        self.name = "weighted(" + ",".join(f"{k}={w:g}" for k, w in self.components.items()) + ")"
        self.description = "weighted sum of rewards: " + ", ".join(f"{w:g} * {k}" for k, w in self.components.items())
        low = high = 0.0
        for weight, reward in self._terms:
            bounds = (weight * reward.value_range[0], weight * reward.value_range[1])
            low += min(bounds)
            high += max(bounds)
        self.value_range = (low, high)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        total = torch.zeros(len(responses), dtype=torch.float32)
        for weight, reward in self._terms:
            total += weight * as_scores(reward.name, reward(prompts, responses), len(responses))
        return total


def weighted_reward(weights: Mapping[str, float]) -> RewardFunction:
    """The weighted sum of the named rewards (each built by :func:`get_reward`).

    Raises ConfigError for an empty mapping or a non-finite weight, RewardError for an
    unknown reward name.
    """
    if not weights:
        raise ConfigError("weighted_reward needs at least one {reward name: weight}, got {}")
    for name, weight in weights.items():
        if not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"weighted_reward: weight for {name!r} must be a finite number, got {weight!r}")
    return WeightedReward({name: (float(w), get_reward(name)) for name, w in weights.items()})
