"""The Trade-off page: the evaluation's plot when there is one, else how to make it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from tests.ui.conftest import LiveApi, new_app, sign_in, texts

pytestmark = pytest.mark.integration


def test_without_a_plot_it_says_how_to_make_one(ui_env: LiveApi) -> None:
    at = sign_in(new_app(), ui_env.user_key)
    at.switch_page("views/tradeoff.py").run()
    assert not at.exception
    assert "personalize eval --plot" in texts(at) and not at.image


def test_shows_the_plot_and_its_table(ui_env: LiveApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    plot = tmp_path / "eval.png"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    fig.savefig(plot)
    plt.close(fig)
    plot.with_suffix(".md").write_text("| method | reward |\n|---|---|\n| vas | 0.8 |\n")
    monkeypatch.setenv("PERSONALIZE_EVAL_PLOT", str(plot))
    at = sign_in(new_app(), ui_env.user_key)
    at.switch_page("views/tradeoff.py").run()
    assert not at.exception
    assert len(at.image) == 1, "the plot is not shown"
    assert "| vas | 0.8 |" in texts(at)
