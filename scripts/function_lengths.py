"""Report function bodies longer than a limit (signatures aside), and fail if any is found.

    python scripts/function_lengths.py [--limit 60] [--top 10] PATH ... [--exclude PATH ...]

A body runs from its first statement (a docstring counts) to its last line; decorators and the
signature, however many lines they take, do not count. Nested functions count inside their parent
and on their own.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Body:
    path: Path
    name: str
    line: int
    lines: int

    def __str__(self) -> str:
        return f"{self.lines:4d}  {self.path}:{self.line}  {self.name}"


def bodies(path: Path) -> Iterator[Body]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first, last = node.body[0].lineno, node.end_lineno or node.body[-1].lineno
            yield Body(path, node.name, node.lineno, last - first + 1)


def python_files(paths: Sequence[Path], excluded: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for root in paths:
        candidates = [root] if root.is_file() else sorted(root.rglob("*.py"))
        found += [p for p in candidates if not any(p.is_relative_to(x) for x in excluded)]
    return found


def long_bodies(paths: Sequence[Path], excluded: Sequence[Path], limit: int) -> tuple[list[Body], list[Body]]:
    """(every body over ``limit``, every body) in the files under ``paths``, longest first."""
    every = sorted((b for f in python_files(paths, excluded) for b in bodies(f)), key=lambda b: -b.lines)
    return [b for b in every if b.lines > limit], every


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--exclude", nargs="*", type=Path, default=[])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--top", type=int, default=10, help="also list the N longest bodies")
    args = parser.parse_args(argv)
    over, every = long_bodies(args.paths, args.exclude, args.limit)
    print(f"longest function bodies (limit {args.limit} lines):")
    for body in every[: args.top]:
        print(body)
    if over:
        print(f"{len(over)} function bodies over {args.limit} lines")
        return 1
    print(f"no function body over {args.limit} lines in {len(every)} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
