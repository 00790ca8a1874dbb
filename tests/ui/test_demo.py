"""``personalize demo``: idempotent preparation, and the real command serving the API and the UI (tiny model)."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.demo import KEYS_FILE, DemoConfig, DemoError, check_port_free, prepare_demo, ui_app_path
from personalize.db import Database, HeadStore, UserStore
from personalize.models import BaseModel
from personalize.settings import Settings
from tests.integration.conftest import free_port
from tests.ui.conftest import DemoProcess

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_base: BaseModel) -> Path:
    """The tiny model saved as a local model directory, under the backbone id its heads record."""
    folder = tmp_path / "tiny-model"
    tiny_base.model.save_pretrained(folder, safe_serialization=True)
    tiny_base.tokenizer.save_pretrained(folder)
    (folder / "personalize.json").write_text(json.dumps({"backbone_id": tiny_base.backbone_id}))
    return folder


def _settings(data_dir: Path, base_model: Path) -> Settings:
    return Settings(data_dir=data_dir, database_url="", base_model=str(base_model), redis_url=None)


def test_prepare_is_idempotent_and_keeps_admin_choices(
    tmp_path: Path, tiny_model_dir: Path, tiny_head_dir: Callable[..., Path]
) -> None:
    heads = tmp_path / "heads"
    heads.mkdir()
    tiny_head_dir("concise", seed=1).rename(heads / "concise")
    tiny_head_dir("helpful", kind="linear", seed=2).rename(heads / "helpful")
    (heads / "broken").mkdir()
    (heads / "broken" / "head.json").write_text("{")
    settings = _settings(tmp_path / "data", tiny_model_dir)

    first = prepare_demo(settings, [heads])
    assert sorted(first.registered) == ["concise@1", "helpful@1"] and not first.present and not first.keys_reused
    assert list(first.skipped) == [str(heads / "broken")]
    keys_file = settings.data_dir / KEYS_FILE
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    db = Database(settings.database_url)
    try:
        users = UserStore(db)
        user, admin = users.authenticate(first.keys.user_key), users.authenticate(first.keys.admin_key)
        assert user is not None and user.name == "demo" and not user.is_admin
        assert admin is not None and admin.is_admin
        HeadStore(db).deactivate("helpful", actor_id=admin.id)  # an admin's choice the next run keeps

        second = prepare_demo(settings, [heads])
        assert second.keys == first.keys and second.keys_reused
        assert not second.registered and sorted(second.present) == ["concise@1", "helpful@1"]
        assert HeadStore(db).get("helpful").active_version is None

        keys_file.write_text("{}")  # keys lost: fresh users under free names
        third = prepare_demo(settings, [heads])
        assert not third.keys_reused and third.keys.user_name.startswith("demo-")
        assert users.authenticate(third.keys.user_key) is not None
    finally:
        db.dispose()


def test_prepare_without_any_head(tmp_path: Path, tiny_model_dir: Path) -> None:
    setup = prepare_demo(_settings(tmp_path / "data", tiny_model_dir), [tmp_path / "nothing-here"])
    assert not setup.registered and not setup.present and setup.keys.user_key.startswith("pz-")


def test_prepare_without_users_registers_heads_only(
    tmp_path: Path, tiny_model_dir: Path, tiny_head_dir: Callable[..., Path]
) -> None:
    settings = _settings(tmp_path / "data", tiny_model_dir)
    setup = prepare_demo(settings, [tiny_head_dir("concise", seed=1)], users=False)
    assert setup.keys is None and setup.registered == ("concise@1",)
    assert not (settings.data_dir / KEYS_FILE).exists()
    db = Database(settings.database_url)
    try:
        assert UserStore(db).all() == []
    finally:
        db.dispose()


def test_config_and_ports_are_checked() -> None:
    with pytest.raises(DemoError, match="different ports"):
        DemoConfig(api_port=9000, ui_port=9000)
    assert DemoConfig(host="0.0.0.0", api_port=1234).api_url == "http://127.0.0.1:1234"
    assert ui_app_path() == ROOT / "ui" / "app.py"
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DemoError, match=f"127.0.0.1:{port}: the port is in use.*--api-port"):
            check_port_free("127.0.0.1", port, "API")


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_demo_command_serves_api_and_ui_and_stops_cleanly(
    tmp_path: Path, tiny_model_dir: Path, tiny_head_dir: Callable[..., Path]
) -> None:
    env = {**os.environ, "PERSONALIZE_DATA_DIR": str(tmp_path / "data"), "PERSONALIZE_BASE_MODEL": str(tiny_model_dir)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    heads = tiny_head_dir("concise", seed=1)
    api_port, ui_port = free_port(), free_port()
    api, ui = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{ui_port}"

    demo = DemoProcess(env, heads, api_port, ui_port)
    demo.wait_for(f"UI ready:  {ui}", timeout_s=240)
    output = "\n".join(demo.seen)
    assert "heads registered: concise@1" in output and f"API ready: {api}" in output
    user_key = next(line.split("API key: ")[1].strip() for line in demo.seen if "user  demo" in line)
    ready = httpx.get(f"{api}/readyz").json()
    assert ready["status"] == "ready" and ready["heads"] == {"concise": "1"}
    me = httpx.get(f"{api}/v1/users/me", headers={"Authorization": f"Bearer {user_key}"})
    assert me.status_code == 200 and me.json()["name"] == "demo"
    assert httpx.get(f"{ui}/_stcore/health").text == "ok"
    assert demo.stop(signal.SIGINT) == 0  # Ctrl-C
    assert "stopping the API and the UI" in "\n".join(demo.seen)
    assert _refused(f"{api}/healthz") and _refused(f"{ui}/_stcore/health")

    again = DemoProcess(env, heads, api_port, ui_port)  # a second run reuses everything
    start = time.monotonic()
    again.wait_for("UI ready", timeout_s=120)
    elapsed = time.monotonic() - start
    output = "\n".join(again.seen)
    assert "stored keys reused" in output and user_key in output and "already registered: concise@1" in output
    assert "preparing the embedded base model" not in output
    assert again.stop(signal.SIGTERM) == 0
    assert _refused(f"{api}/healthz") and _refused(f"{ui}/_stcore/health")
    print(f"second demo start: {elapsed:.1f} s")
