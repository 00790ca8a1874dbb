"""The commands a user copies from the README and the docs: every fenced shell block, one command per
entry (backslash continuations joined), and every fenced Python block."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = ("bash", "sh", "shell", "console")


def blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang in languages]


def _complete(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def shell_commands(path: Path) -> list[str]:
    """Every command of the file's shell blocks (backslash continuations and quoted line breaks kept
    together), comments and blank lines left out."""
    commands: list[str] = []
    for body in blocks(path, SHELL):
        pending = ""
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            if not pending and (not line.strip() or line.startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line.strip()
            if _complete(pending):
                commands.append(pending)
                pending = ""
        assert not pending, f"unterminated command in {path}: {pending}"
    return commands


def python_blocks(path: Path) -> list[str]:
    return blocks(path, ("python",))


def run(command: str, env: dict[str, str], cwd: Path, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """``command`` through bash, as a user's shell would run it."""
    return subprocess.run(
        ["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def words(command: str) -> list[str]:
    return shlex.split(command)
