"""Every command of the README that runs to completion, run as written (servers and Docker aside)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalize.models import BaseModel
from tests.e2e.conftest import UNSET, Served, user_env
from tests.e2e.docs_commands import ROOT, python_blocks, run, shell_commands, words

pytestmark = pytest.mark.e2e
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"

NOT_RUN = {
    "bash scripts/setup.sh && .venv/bin/personalize demo": "serves until Ctrl-C (tests/ui/test_demo.py and "
    "tests/e2e/test_browser.py run `personalize demo`)",
    "bash scripts/test.sh": "the test suite itself",
}
OWN_OBJECTIVE = ("personalize heads train --objective formal", "personalize eval --objectives formal")
"""Run in the example's folder by tests/e2e/test_own_objective.py."""


def _kind(command: str) -> str:
    if command in NOT_RUN:
        return "not run"
    if command.startswith(OWN_OBJECTIVE):
        return "own objective"
    if command.startswith("curl "):
        return "against the service"
    if command.startswith(".venv/bin/personalize "):
        return "here"
    return "unknown"


def test_every_readme_command_is_run_by_a_test() -> None:
    commands = shell_commands(README)
    kinds = {c: _kind(c) for c in commands}
    assert "unknown" not in kinds.values(), [c for c, k in kinds.items() if k == "unknown"]
    assert set(NOT_RUN) <= set(commands)  # nothing listed as not run that the README no longer has
    assert sum(k == "own objective" for k in kinds.values()) == len(OWN_OBJECTIVE)
    assert len(python_blocks(README)) == 1


def test_the_readme_cli_commands_run(tmp_path: Path, data_dir: Path, real_base: BaseModel) -> None:
    """Each ``.venv/bin/personalize ...`` line, run in this process (the installed command's own app, the
    words as written, a user's environment): a process per line would mostly time Python's imports."""
    from typer.testing import CliRunner

    from app.cli import app

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(data_dir / "models")  # the model cache ``real_base`` made sure of
    env: dict[str, str | None] = {**user_env(data), **dict.fromkeys(UNSET)}
    for command in (c for c in shell_commands(README) if _kind(c) == "here"):
        argv = words(command)
        assert argv[0] == ".venv/bin/personalize" and (ROOT / argv[0]).is_file()
        result = CliRunner().invoke(app, argv[1:], env=env)
        assert result.exit_code == 0, (command, result.output)
        if " generate " in command:
            out = json.loads(result.stdout)
            assert out["text"].strip() and out["weights"] == {"concise": 1.0} and out["head_versions"]["concise"]
        if " users create " in command:
            created = json.loads(result.stdout)
            assert created["role"] == "admin" and created["api_key"]
        if " heads list" in command:
            assert all(name in result.stdout for name in ("concise", "helpful", "harmless", "positive"))
        if " db upgrade" in command:
            assert "database at revision" in result.stdout and (data / "personalize.db").is_file()


def test_the_readme_curl_and_sdk_calls_answer(served: Served, tmp_path: Path) -> None:
    env = {**served.env, "PERSONALIZE_API_KEY": served.user_key}
    [curl] = [c for c in shell_commands(README) if _kind(c) == "against the service"]
    result = run(curl.replace(DEFAULT_URL, served.url), env, ROOT)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["choices"][0]["message"]["content"].strip(), body
    assert body["personalization"]["weights"] == {"concise": 1.0, "helpful": 0.5}
    assert set(body["personalization"]["head_versions"]) == {"concise", "helpful"}
    [snippet] = python_blocks(README)
    script = tmp_path / "readme_sdk.py"
    script.write_text(snippet.replace(DEFAULT_URL, served.url))
    result = run(f"python {script}", env, ROOT)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) >= 2, result.stdout
