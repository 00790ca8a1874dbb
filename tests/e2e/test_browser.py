"""A person's first minutes, in Debian's headless Chromium driven by Playwright: ``personalize demo`` on the
real embedded model, sign in with the pre-filled key, move the concise slider, generate, and see the base
and the personalized answers side by side. Saves the screenshot the README shows (docs/ui.png)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from personalize.errors import PersonalizeError
from personalize.heads import SHIPPED_HEADS_DIR, discover_heads, load_head, new_head, save_head
from personalize.models import BaseModel
from tests.conftest import randomize_head
from tests.integration.conftest import free_port
from tests.ui.conftest import DemoProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "ui.png"
SCREENSHOT_HEIGHT = 1400
UI_TIMEOUT_MS = 60_000
ANSWER_TIMEOUT_MS = 420_000
STRAY_TEXT = "The number inputs shown for each method"
"""A module-level string Streamlit once rendered at the top of the Generate page."""


def _shipped_objectives() -> set[str]:
    found: set[str] = set()
    for folder in discover_heads([SHIPPED_HEADS_DIR]):
        try:
            found.add(load_head(folder).meta.objective)
        except PersonalizeError:
            continue
    return found


@pytest.fixture
def head_folders(tmp_path: Path, real_base: BaseModel) -> list[Path]:
    """The shipped heads; plus a small random 'concise' head for the real model while none is shipped."""
    folders = [SHIPPED_HEADS_DIR]
    if "concise" not in _shipped_objectives():
        head = randomize_head(new_head(real_base, "concise", kind="linear"), seed=0, scale=0.02)
        folders.append(save_head(head, tmp_path / "heads" / "concise"))
    return folders


def test_sign_in_move_the_concise_slider_and_generate(tmp_path: Path, data_dir: Path, head_folders: list[Path]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/setup.sh --dev does it)")
    demo_data = tmp_path / "data"
    demo_data.mkdir()
    (demo_data / "models").symlink_to(data_dir / "models")  # the base model cache the e2e suite already built
    env = {**os.environ, "PERSONALIZE_DATA_DIR": str(demo_data)}
    for name in ("DATABASE_URL", "REDIS_URL", "PERSONALIZE_BASE_MODEL"):
        env.pop(name, None)
    api_port, ui_port = free_port(), free_port()
    demo = DemoProcess(env, head_folders, api_port, ui_port)
    try:
        demo.wait_for(f"UI ready:  http://127.0.0.1:{ui_port}", timeout_s=600)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                expect = sync_api.expect
                page.goto(f"http://127.0.0.1:{ui_port}", wait_until="domcontentloaded")

                page.get_by_role("button", name="Sign in").click(timeout=UI_TIMEOUT_MS)  # the key is pre-filled
                expect(page.get_by_text("Signed in as")).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(page.get_by_role("heading", name="Generate")).to_be_visible(timeout=UI_TIMEOUT_MS)
                assert STRAY_TEXT not in page.locator("body").inner_text()  # only what the page means to say

                concise = page.locator('input[type="range"][aria-label^="concise"]')
                expect(concise).to_have_count(1, timeout=UI_TIMEOUT_MS)
                concise.focus()
                for _ in range(10):  # 0.0 -> 1.0 in steps of 0.1
                    concise.press("ArrowRight")
                expect(concise).to_have_attribute("aria-valuetext", "1.00")
                max_tokens = page.locator('input[type="range"][aria-label="Max tokens"]')
                max_tokens.focus()
                for _ in range(4):  # 128 -> 64: keeps the test quick on a CPU
                    max_tokens.press("ArrowLeft")
                expect(max_tokens).to_have_attribute("aria-valuetext", "64")

                page.get_by_role("button", name="Generate").click()
                lengths = page.get_by_text(re.compile(r"\d+ tokens · \d+ words"))
                expect(lengths).to_have_count(2, timeout=ANSWER_TIMEOUT_MS)  # both answers finished
                expect(page.get_by_text(re.compile(r"applied: vas · beta [\d.]+ · concise=\+1"))).to_be_visible()
                expect(page.get_by_text("applied: base")).to_be_visible()
                expect(page.locator('[data-testid="stAlertContentError"]')).to_have_count(0)
                for header in ("Base model", "Personalized"):
                    column = page.locator('[data-testid="stColumn"]').filter(
                        has=page.get_by_role("heading", name=header)
                    )
                    answer = column.inner_text().replace(header, "", 1).strip()
                    assert len(answer.split()) >= 3, f"{header}: {answer!r}"
                expect(page.get_by_role("heading", name="Token view")).to_be_visible()
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                # the page scrolls inside Streamlit's own container: a tall window shows all of it
                page.set_viewport_size({"width": 1400, "height": SCREENSHOT_HEIGHT})
                page.screenshot(path=str(SCREENSHOT))
            finally:
                browser.close()
    finally:
        code = demo.stop(signal.SIGINT) if demo.process.poll() is None else demo.process.returncode
    assert code == 0, "\n".join(demo.seen)
    assert SCREENSHOT.stat().st_size > 10_000
