"""The parameters of the decoding methods, described once for every interface that offers them.

The values themselves are the library's validated dataclasses (``IVGParams``, ``AISPParams`` and
``Personalization.best_of`` in :mod:`personalize.decoding.config`): their fields, types and
defaults are read from them, and they check every value. What a dataclass cannot say about a
field, its range for a form or a schema and a sentence for a help text, is listed here, field by
field. From this the HTTP API builds its request schema (``app.schemas``) and the command line its
options (``personalize generate --candidates ...``); the UI builds its inputs from the API's
OpenAPI document. A test checks that every field of each dataclass is described here and that the
dataclass accepts each range's ends and refuses what lies just outside.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from personalize.decoding.config import (
    AISP_ITERATIONS_RANGE,
    AISP_LAMBDA_RANGE,
    AISP_MAX_SAMPLES,
    AISP_SAMPLES_RANGE,
    AISP_SIGMA_RANGE,
    BEST_OF_RANGE,
    IVG_BEAMS_RANGE,
    IVG_CANDIDATES_RANGE,
    IVG_CHUNK_RANGE,
    IVG_MAX_SEQUENCES,
    WEIGHT_RANGE,
    AISPParams,
    IVGParams,
    Personalization,
)

Number = int | float


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of one method."""

    method: str
    name: str
    kind: type[int] | type[float]
    default: Number
    bounds: tuple[Number, Number]
    description: str

    @property
    def option(self) -> str:
        """Its command-line option, e.g. ``--chunk-tokens``."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class _About:
    bounds: tuple[Number, Number]
    description: str


METHOD_DATACLASSES: dict[str, type[Any]] = {"ivg": IVGParams, "aisp": AISPParams}
"""Methods whose parameters travel as one object (``personalization.ivg``, ``Personalization(ivg=...)``)."""

_ABOUT: dict[str, dict[str, _About]] = {
    "ivg": {
        "candidates": _About(IVG_CANDIDATES_RANGE, "C: continuations sampled per beam at each chunk."),
        "chunk_tokens": _About(IVG_CHUNK_RANGE, "L: tokens per chunk before the candidates are compared."),
        "beams": _About(
            IVG_BEAMS_RANGE,
            f"B: partial responses kept after each chunk; beams x candidates must be at most {IVG_MAX_SEQUENCES}. "
            "beams = candidates = 1 is token-level guidance alone (and streams).",
        ),
        "implicit_weight": _About(
            WEIGHT_RANGE, "Multiplies the weights of implicit heads at the token level (0: chunk-level search only)."
        ),
    },
    "aisp": {
        "sigma": _About(AISP_SIGMA_RANGE, "Std of the Gaussian noise added to the final hidden state (0: base model)."),
        "lam": _About(
            AISP_LAMBDA_RANGE,
            "Temperature of the importance weights softmax(reward / lam): small trusts the best sample.",
        ),
        "samples": _About(
            AISP_SAMPLES_RANGE,
            f"N: responses per iteration; samples x iterations must be at most {AISP_MAX_SAMPLES}.",
        ),
        "iterations": _About(AISP_ITERATIONS_RANGE, "I: rounds of sampling and moving mu."),
    },
}
_BEST_OF = _About(BEST_OF_RANGE, "N for method bon: samples drawn, the best by the weighted rewards returned.")


def _default(kind: type[Any], name: str) -> Number:
    [found] = [f for f in fields(kind) if f.name == name]
    if found.default is MISSING:
        raise TypeError(f"{kind.__name__}.{name} has no default")
    value: Number = found.default  # type: ignore[assignment]
    return value


def method_params(method: str) -> tuple[ParamSpec, ...]:
    """The parameters of ``method`` (``ivg``, ``aisp`` or ``bon``), in the dataclass's field order."""
    if method == "bon":
        default = _default(Personalization, "best_of")
        return (ParamSpec("bon", "best_of", int, default, _BEST_OF.bounds, _BEST_OF.description),)
    kind = METHOD_DATACLASSES.get(method)
    if kind is None:
        return ()
    specs = []
    for f in fields(kind):
        about = _ABOUT[method][f.name]
        default = _default(kind, f.name)
        specs.append(ParamSpec(method, f.name, type(default), default, about.bounds, about.description))
    return tuple(specs)


def all_method_params() -> tuple[ParamSpec, ...]:
    """Every method's parameters: bon's, then those of each method with a parameter object."""
    return tuple(spec for method in ("bon", *METHOD_DATACLASSES) for spec in method_params(method))
