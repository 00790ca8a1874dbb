"""The methods' parameters as every interface sees them match the library's dataclasses."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from personalize.decoding.config import Personalization
from personalize.errors import ConfigError
from personalize.method_params import METHOD_DATACLASSES, ParamSpec, all_method_params, method_params


def _build(spec: ParamSpec, value: float) -> object:
    if spec.method == "bon":
        return Personalization(best_of=value)  # type: ignore[arg-type]
    return METHOD_DATACLASSES[spec.method](**{spec.name: value})


@pytest.mark.parametrize("spec", all_method_params(), ids=lambda s: f"{s.method}.{s.name}")
def test_each_range_is_the_one_the_dataclass_checks(spec: ParamSpec) -> None:
    low, high = spec.bounds
    _build(spec, spec.kind(low))
    _build(spec, spec.kind(high))
    step = 1 if spec.kind is int else max(abs(high), 1.0) * 1e-3
    for outside in (low - step, high + step):
        with pytest.raises(ConfigError):
            _build(spec, spec.kind(outside))


def test_every_field_of_every_dataclass_is_described() -> None:
    for method, kind in METHOD_DATACLASSES.items():
        assert [s.name for s in method_params(method)] == [f.name for f in fields(kind)]
        assert all(s.description and s.default == getattr(kind(), s.name) for s in method_params(method))
    assert method_params("vas") == ()


def test_generate_offers_one_option_per_parameter() -> None:
    from personalize.cli import app

    result = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.output)
    for spec in all_method_params():
        assert spec.option in plain, spec.option
