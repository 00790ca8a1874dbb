"""Progress lines for logs (no terminal)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from personalize.progress import LineProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_interval_and_at_completion() -> None:
    out, clock = io.StringIO(), Clock()
    console = Console(file=out, width=200)
    with LineProgress(console, interval=30, clock=clock) as bar:
        task = bar.add_task("rollouts", total=960)
        for _ in range(30):  # 32 per batch, 10 s a batch
            clock.now += 10
            bar.advance(task, 32)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every third batch (30 s); the last one is the completion line
    assert lines[0] == "rollouts: 96/960 (10%) 0:30 elapsed, ~4:30 left"
    assert lines[-1] == "rollouts: 960/960 (100%) 5:00 elapsed"


def test_open_ended_tasks_and_descriptions_print_on_exit() -> None:
    out, clock = io.StringIO(), Clock()
    with LineProgress(Console(file=out, width=200), interval=60, clock=clock) as bar:
        task = bar.add_task("evaluating", total=None)
        clock.now += 5
        bar.update(task, description="evaluating: base")
        counted = bar.add_task("scoring prefixes", total=None)
        bar.advance(counted, 500)
    assert out.getvalue().splitlines() == ["evaluating: base (0:05 elapsed)", "scoring prefixes: 500 (0:00 elapsed)"]


def test_a_terminal_gets_rich_bars_and_a_log_gets_lines() -> None:
    assert isinstance(progress_bar(Console(file=io.StringIO(), force_terminal=True)), Progress)
    assert isinstance(progress_bar(Console(file=io.StringIO())), LineProgress)
