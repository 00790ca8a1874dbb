"""The shape rules the codebase holds itself to: short functions, and a thin command-line module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60
CHECKED = [ROOT / "personalize", ROOT / "app"]
NOT_YET_CHECKED: list[Path] = []  # every tree is checked


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("function_lengths", ROOT / "scripts" / "function_lengths.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_no_function_body_is_over_60_lines() -> None:
    over, every = _script().long_bodies(CHECKED, NOT_YET_CHECKED, LIMIT)
    assert len(every) > 300  # the scan did find the code
    assert not over, "\n".join(map(str, over))


def test_the_counter_counts_bodies_not_signatures(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "def long_signature(\n    a: int,\n    b: int,\n) -> int:\n    '''Doc.'''\n    return a + b\n\n\n"
        "def outer():\n    def inner():\n        return 1\n\n    return inner\n"
    )
    found = {b.name: b.lines for b in _script().bodies(source)}
    assert found == {"long_signature": 2, "outer": 4, "inner": 1}


def test_the_command_line_module_is_thin() -> None:
    assert len((ROOT / "personalize" / "cli.py").read_text().splitlines()) <= 300
