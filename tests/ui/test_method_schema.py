"""The UI's method parameters come from the API's OpenAPI document, which comes from the library's
dataclasses; and no page module holds a bare string that Streamlit would render as text."""

from __future__ import annotations

import ast
from pathlib import Path

from app.main import create_app
from personalize.method_params import method_params
from personalize.settings import Settings
from tests.integration.conftest import tiny_engine_factory
from ui.client import method_params_from_openapi, methods_from_openapi

ROOT = Path(__file__).resolve().parents[2]


def test_the_forms_inputs_are_the_librarys_parameters(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=None, auto_migrate=True)
    document = create_app(settings, engine_factory=tiny_engine_factory).openapi()
    found = method_params_from_openapi(document)
    assert set(found) == {"bon", "ivg", "aisp"} and {"bon", "ivg", "aisp"} <= set(methods_from_openapi(document))
    for method, params in found.items():
        specs = method_params(method)
        assert [p.name for p in params] == [s.name for s in specs]
        for param, spec in zip(params, specs, strict=True):
            assert (param.low, param.high) == tuple(float(x) for x in spec.bounds), param
            assert param.default == spec.default and param.is_int == (spec.kind is int), param
            assert param.description == spec.description
    assert [p.key for p in found["ivg"]][:2] == ["ivg_candidates", "ivg_chunk_tokens"]
    assert [p.key for p in found["bon"]] == ["best_of"]


def _bare_strings(path: Path) -> list[str]:
    """Module-level string expressions after the docstring: Streamlit's magic writes each onto the page."""
    body = ast.parse(path.read_text()).body
    start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
    return [
        str(node.value.value)
        for node in body[start:]
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    ]


def test_no_page_module_holds_a_bare_string() -> None:
    pages = [ROOT / "ui" / "app.py", *sorted((ROOT / "ui" / "views").glob("*.py"))]
    stray = {str(p.relative_to(ROOT)): _bare_strings(p) for p in pages}
    assert not any(stray.values()), stray
