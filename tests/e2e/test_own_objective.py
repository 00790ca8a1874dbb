"""A team's own objective, as a user would type it: a head for `formal` trained from a prompts file and a
``module:function`` reward, evaluated on those prompts, used for generation, and registered with a running
service through the admin API (the commands of the README and of docs/training.md, run as written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Served
from tests.e2e.docs_commands import ROOT, run, shell_commands

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "docs" / "examples" / "formal"
TRAINING_DOC = ROOT / "docs" / "training.md"


def _command(path: Path, start: str) -> str:
    [found] = [c for c in shell_commands(path) if c.startswith(start)]
    return found


def test_train_evaluate_generate_and_register_a_new_objective(served: Served, tmp_path: Path) -> None:
    project = tmp_path / "team"
    shutil.copytree(EXAMPLE, project)  # prompts.jsonl and formality.py, as a team would have them
    env = served.env
    train = _command(ROOT / "README.md", "personalize heads train --objective formal")
    assert train == _command(TRAINING_DOC, "personalize heads train")  # the docs show the same command
    result = run(train, env, project)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((project / "heads" / "formal" / "head.json").read_text())
    assert meta["objective"] == "formal" and meta["reward"] == "formality:score" and meta["kind"] == "linear"
    assert meta["training"]["prompts"] == 8 and meta["training"]["rollout_config"]["max_new_tokens"] == 32

    evaluate = _command(ROOT / "README.md", "personalize eval --objectives formal")
    result = run(evaluate, env, project)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | formal |")
    labels = [row.split("|")[1].strip() for row in rows[1:]]  # the rows below the header and its rule
    assert labels == ["base", "vas formal=1 beta=1"], labels
    scores = [float(row.split("|")[2].split("±")[0]) for row in rows[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores), scores  # the team's reward, in its own range

    generate = _command(TRAINING_DOC, "personalize generate")
    result = run(f"{generate} --json --max-new-tokens 24 --seed 0", env, project)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["head_versions"] == {"formal": "1"} and out["text"].strip()

    upload = _command(TRAINING_DOC, "curl -s http://127.0.0.1:8000/v1/objectives")
    result = run(upload.replace("http://127.0.0.1:8000", served.url), {**env, "ADMIN_KEY": served.admin_key}, project)
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    assert registered["name"] == "formal" and registered["active"], registered
    auth = {"Authorization": f"Bearer {served.user_key}"}
    chat = {
        "model": "default",
        "max_tokens": 16,
        "seed": 0,
        "messages": [{"role": "user", "content": "Write to a client about a delayed order."}],
        "personalization": {"weights": {"formal": 1.0}},
    }
    answer = httpx.post(f"{served.url}/v1/chat/completions", json=chat, headers=auth, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["personalization"]["head_versions"] == {"formal": "1"}
    body = {"prompt": "Hello", "responses": ["Dear Sir."], "objectives": ["formal"]}
    scored = httpx.post(f"{served.url}/v1/rewards/score", json=body, headers=auth, timeout=60)
    assert scored.status_code == 422 and "imports no module" in scored.json()["error"]["message"]
