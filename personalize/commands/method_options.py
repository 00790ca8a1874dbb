"""Command-line options for the decoding methods' parameters, one per field of their dataclasses.

``@with_method_options`` adds ``--best-of``, ``--candidates``, ``--chunk-tokens``, ... (every
:func:`personalize.method_params.all_method_params`) to a Typer command, which receives the values
given, grouped by method, as ``method_values`` (``{"ivg": {"beams": 1}}``); the dataclasses check
them. A field added to a method's dataclass becomes an option here with no other change.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from personalize.method_params import ParamSpec, all_method_params

MethodValues = dict[str, dict[str, float | int]]


def _argument(spec: ParamSpec) -> str:
    return f"{spec.method}_{spec.name}"


def _help(spec: ParamSpec) -> str:
    low, high = spec.bounds
    return f"{spec.method}: {spec.description} [{low:g}, {high:g}] (default {spec.default:g})."


def _parameter(spec: ParamSpec) -> inspect.Parameter:
    option = typer.Option(spec.option, help=_help(spec), show_default=False)
    annotation = Annotated[spec.kind | None, option]  # type: ignore[name-defined]
    return inspect.Parameter(_argument(spec), inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def with_method_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with one option per method parameter; it gets them as ``method_values``."""
    specs = all_method_params()
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "method_values"]
    parameters = kept + [_parameter(s) for s in specs]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        grouped: MethodValues = {}
        for spec in specs:
            value = kwargs.pop(_argument(spec))
            if value is not None:
                grouped.setdefault(spec.method, {})[spec.name] = value
        return command(**kwargs, method_values=grouped)

    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
