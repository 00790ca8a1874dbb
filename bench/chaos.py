"""The hardening campaign as one command: contract fuzzing, outages under load, concurrent writers.

    python -m bench.chaos [--model tiny|embedded] [--system-services] [--out FILE]

Starts its own PostgreSQL and Redis (private, on free ports: stopping them touches
nothing else) or, with ``--system-services``, uses the machine's (127.0.0.1:5432 and
:6379, stopped and restarted with pg_ctlcluster / redis-server), and its own
``personalize serve`` on the tiny test model (default) or the embedded one. Then:

1. schemathesis (installed on first use) with the checks not_a_server_error,
   status_code_conformance, content_type_conformance, response_schema_conformance,
   once with a user key and once with an admin key; operations that rotate or revoke
   keys run in a second pass with a throw-away key of the same role;
2. PostgreSQL stopped for ``--outage`` seconds under load (8 clients: chat, profile
   read, whoami, profile write), then restarted: statuses per request kind, before,
   during and after, and the time until every kind succeeds again;
3. Redis killed (SIGKILL) for the same time under the same load, then restarted;
4. 32 concurrent profile writers doing read-modify-write with If-Match;
5. a key rotated from the CLI: time until the running server refuses the old key;
6. SIGTERM with requests in flight: their statuses and how long the process took to exit.

Prints the figures and writes them as JSON (``--out``, default docs/hardening.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.chaos_load import Load, concurrent_writers
from bench.pgcluster import PrivatePostgres

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
KEY_CHANGES = r"/keys"
SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


# ---- the services ---------------------------------------------------------------------------


class Postgres:
    def __init__(self, system: bool) -> None:
        self.system = system
        self.private: PrivatePostgres | None = None
        if not system:
            self.private = PrivatePostgres().init()
            self.private.start()

    def create_database(self) -> str:
        name = f"pz_chaos_{uuid.uuid4().hex[:8]}"
        if self.private is not None:
            return self.private.create_database(name)
        with psycopg.connect(f"{SYSTEM_PG}/test", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # generated name
        return f"{SYSTEM_PG}/{name}"

    def _cluster(self, action: str) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)

    def stop(self) -> None:
        self.private.stop() if self.private is not None else self._cluster("stop")

    def start(self) -> None:
        self.private.start() if self.private is not None else self._cluster("start")

    def close(self) -> None:
        if self.private is not None:
            self.private.destroy()


SYSTEM_REDIS_START = (
    "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
    "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
)  # fmt: skip


class Redis:
    def __init__(self, system: bool) -> None:
        self.system = system
        self.port = 6379 if system else free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if not system:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        probe = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return probe.stdout.strip() == "PONG"

    def start(self) -> None:
        if self.system:
            subprocess.run(SYSTEM_REDIS_START, check=True)
        else:
            argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self._ping():
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, connections cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
            return
        info = subprocess.run(["redis-cli", "-p", "6379", "info", "server"], capture_output=True, text=True).stdout
        pid = int(re.search(r"process_id:(\d+)", info).group(1))  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


# ---- the server -----------------------------------------------------------------------------


def tiny_model(folder: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from tests.tiny import build_tiny_base

    base = build_tiny_base()
    base.model.save_pretrained(folder, safe_serialization=True)
    base.tokenizer.save_pretrained(folder)
    (folder / "personalize.json").write_text(json.dumps({"backbone_id": base.backbone_id}))
    return str(folder)


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['PERSONALIZE_PORT']}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_key: str | None = None

    def cli(self, *argv: str) -> str:
        done = subprocess.run([str(BIN / "personalize"), *argv], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"personalize {' '.join(argv)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self, timeout_s: float = 600) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "personalize"), "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not become ready; see {self.log}")
            time.sleep(0.5)

    def user(self, name: str, admin: bool = False) -> tuple[str, str]:
        """A new user over HTTP (the first admin comes from the CLI)."""
        if self.admin_key is None:
            created = json.loads(self.cli("users", "create", "chaos-root", "--admin", "--json"))
            self.admin_key = created["api_key"]
        body = {"name": name, "role": "admin" if admin else "user"}
        response = httpx.post(
            f"{self.url}/v1/users", json=body, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30
        )
        response.raise_for_status()
        return response.json()["id"], response.json()["api_key"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


# ---- the phases -----------------------------------------------------------------------------


def ensure_schemathesis() -> Path:
    if importlib.util.find_spec("schemathesis") is None:
        say("installing schemathesis (first run only)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "schemathesis>=4"], check=True)
    return BIN / "schemathesis"


def schemathesis_pass(
    tool: Path, server: Server, key: str, report: Path, args: argparse.Namespace, *, keys: bool
) -> dict[str, Any]:
    selector = ["--include-path-regex" if keys else "--exclude-path-regex", KEY_CHANGES]
    argv = [
        str(tool), "run", f"{server.url}/openapi.json", "--checks", CHECKS, "-H", f"Authorization: Bearer {key}",
        "--max-examples", str(args.max_examples), "--seed", str(args.seed), "--no-color", "--workers", "1",
        "--request-timeout", "60", "--report", "junit", "--report-junit-path", str(report), *selector,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=report.parent)  # its cache goes there
    report.with_suffix(".txt").write_text(done.stdout + done.stderr)
    suites = ET.parse(report).getroot().iter("testsuite") if report.is_file() else iter(())
    failures = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    generated = re.search(r"(\d+) generated", done.stdout)
    return {
        "exit_code": done.returncode,
        "failures": failures,
        "cases": int(generated.group(1)) if generated else None,
        "log": str(report.with_suffix(".txt")),
    }


def schemathesis_phase(tool: Path, server: Server, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for role in ("user", "admin"):
        _, key = server.user(f"fuzz-{role}", admin=role == "admin")
        _, throwaway = server.user(f"fuzz-{role}-keys", admin=role == "admin")
        say(f"schemathesis with a {role} key")
        main = schemathesis_pass(tool, server, key, work / f"st-{role}.xml", args, keys=False)
        changes = schemathesis_pass(tool, server, throwaway, work / f"st-{role}-keys.xml", args, keys=True)
        results[role] = {
            "failures": main["failures"] + changes["failures"],
            "cases": (main["cases"] or 0) + (changes["cases"] or 0),
            "passes": {"operations": main, "key_changes": changes},
        }
        say(f"  {results[role]['cases']} cases, {results[role]['failures']} failures")
    return results


def outage_phase(
    name: str, server: Server, users: list[tuple[str, str]], down: Any, up: Any, outage_s: float
) -> dict[str, Any]:
    load = Load(server.url, users).start()
    time.sleep(5)  # a steady state before the outage
    t_down = time.monotonic()
    down()
    time.sleep(outage_s)
    up()
    t_up = time.monotonic()
    recovered = load.wait_recovered(t_up)
    time.sleep(5)
    load.stop()
    end = time.monotonic()
    statuses = {s.status for s in load.log.samples}
    result = {
        "outage_s": round(t_up - t_down, 1),
        "before": load.log.counts(0, t_down),
        "during": load.log.counts(t_down, t_up),
        "after": load.log.counts(t_up, end),
        "recovered_after_s": round(recovered, 2) if recovered is not None else None,
        "server_errors_500": sum(1 for s in load.log.samples if s.status >= 500 and s.status != 503),
        "no_answer": sum(1 for s in load.log.samples if s.status == 0),
        "statuses": sorted(statuses),
    }
    say(f"  {name}: {result['during']} during; recovered after {result['recovered_after_s']} s")
    return result


def revocation_phase(server: Server) -> dict[str, Any]:
    user_id, key = server.user("rotate-me")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{server.url}/v1/users/me", headers=headers).status_code == 200  # cached now
    start = time.monotonic()
    new_key = json.loads(server.cli("users", "rotate-key", user_id, "--json"))["api_key"]
    rotated = time.monotonic()
    while httpx.get(f"{server.url}/v1/users/me", headers=headers).status_code != 401:
        if time.monotonic() - rotated > 60:
            break
        time.sleep(0.01)
    refused = time.monotonic()
    new_ok = httpx.get(f"{server.url}/v1/users/me", headers={"Authorization": f"Bearer {new_key}"}).status_code
    return {
        "cli_rotate_s": round(rotated - start, 2),
        "old_key_refused_after_s": round(refused - rotated, 3),
        "new_key_status": new_ok,
    }


def shutdown_phase(server: Server, key: str, in_flight: int = 4) -> dict[str, Any]:
    assert server.process is not None
    statuses: list[int] = []
    ended: list[float] = []
    body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 256, "stream": True}

    def stream() -> None:
        try:
            with httpx.Client(timeout=120) as client:
                response = client.post(
                    f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                done = response.text.rstrip().endswith("data: [DONE]")
                statuses.append(response.status_code if done else -response.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        ended.append(time.monotonic())

    threads = [threading.Thread(target=stream) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    start = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(120)
    exited = time.monotonic() - start
    for thread in threads:
        thread.join(120)
    return {
        "in_flight": in_flight,
        "statuses": statuses,
        "last_stream_done_after_s": round(max(ended) - start, 2) if ended else None,
        "exit_code": code,
        "exit_after_s": round(exited, 2),
    }


# ---- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "embedded"), default="tiny")
    parser.add_argument("--system-services", action="store_true", help="stop the machine's PostgreSQL and Redis")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds each service stays down")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "hardening.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pz-chaos-"))
    tool = ensure_schemathesis()
    say(f"work folder {work}; services: {'system' if args.system_services else 'private'}; model {args.model}")
    postgres, redis = Postgres(args.system_services), Redis(args.system_services)
    server: Server | None = None
    try:
        env = {
            **os.environ,
            "DATABASE_URL": postgres.create_database(),
            "REDIS_URL": redis.url,
            "PERSONALIZE_REDIS_PREFIX": f"chaos-{uuid.uuid4().hex[:8]}",
            "PERSONALIZE_DATA_DIR": str(work / "data"),
            "PERSONALIZE_PORT": str(free_port()),
            "PERSONALIZE_AUTO_MIGRATE": "true",
            "PERSONALIZE_RATE_LIMIT_PER_MINUTE": "0",
            "HF_HUB_OFFLINE": "1",
        }
        if args.model == "tiny":
            env["PERSONALIZE_BASE_MODEL"] = tiny_model(work / "tiny-model")
        server = Server(env, work / "server.log")
        if args.model == "embedded":
            say("preparing the embedded model and the shipped heads")
            server.cli("demo", "--prepare-only", "--no-users")
        server.start()
        say(f"server ready at {server.url}")
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m bench.chaos " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "model": args.model,
            "services": "system" if args.system_services else "private",
        }
        results["schemathesis"] = schemathesis_phase(tool, server, work, args)
        users = [server.user(f"load-{i}") for i in range(args.clients)]
        say(f"PostgreSQL stopped for {args.outage} s under load")
        results["postgres_outage"] = outage_phase("postgres", server, users, postgres.stop, postgres.start, args.outage)
        say(f"Redis killed for {args.outage} s under load")
        results["redis_outage"] = outage_phase("redis", server, users, redis.kill, redis.start, args.outage)
        say("32 concurrent profile writers")
        writer_id, writer_key = server.user("writer")
        results["writers"] = concurrent_writers(server.url, writer_id, writer_key)
        results["revocation"] = revocation_phase(server)
        say("SIGTERM with requests in flight")
        results["shutdown"] = shutdown_phase(server, users[0][1])
    finally:
        if server is not None:
            server.stop()
        redis.close()
        postgres.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(work / "data", ignore_errors=True)


if __name__ == "__main__":
    main()
