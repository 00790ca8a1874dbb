"""Progress for long commands: a live bar on a terminal, plain periodic lines in a log.

Rich draws nothing while a bar runs when its console is not a terminal (a container log,
``nohup``, CI), so a 30-minute rollout looked hung until it ended. ``progress_bar`` returns
rich's ``Progress`` on a terminal and otherwise a :class:`LineProgress` with the same small
API (``add_task``, ``advance``, ``update``) that prints one line per task every
``interval`` seconds and when the task completes.

Library jobs (training, evaluation) report through a :class:`Reporter`: :class:`Quiet` by
default, :class:`ConsoleReporter` on the command line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from rich.console import Console
from rich.progress import Progress, TaskID


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    started: float = 0.0
    printed: float = 0.0

    @property
    def finished(self) -> bool:
        return self.total is not None and self.completed >= self.total


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LineProgress:
    """Periodic plain-text progress lines, e.g. ``rollouts: 96/960 (10%) 2:41 elapsed, ~24:09 left``."""

    def __init__(self, console: Console, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self._interval = interval
        self._clock = clock
        self._tasks: list[_Task] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:  # a finished task printed its last line when it finished
            for task in self._tasks:
                if not task.finished:
                    self._print(task)

    def add_task(self, description: str, total: float | None = None, **_: Any) -> TaskID:
        now = self._clock()
        self._tasks.append(_Task(description, total, started=now, printed=now))
        return TaskID(len(self._tasks) - 1)

    def advance(self, task_id: TaskID, advance: float = 1.0) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: TaskID, *, advance: float = 0.0, description: str | None = None, **_: Any) -> None:
        task = self._tasks[task_id]
        task.completed += advance
        if description is not None:
            task.description = description
        if task.finished or self._clock() - task.printed >= self._interval:
            self._print(task)

    def _print(self, task: _Task) -> None:
        now = self._clock()
        task.printed = now
        elapsed = now - task.started
        if not task.total:  # open-ended: a count if there is one, else the description says where it is
            count = f": {task.completed:g}" if task.completed else ""
            self._console.print(f"{task.description}{count} ({_duration(elapsed)} elapsed)", highlight=False)
            return
        count = f"{task.completed:g}/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        left = ""
        if 0 < task.completed < task.total:
            left = f", ~{_duration(elapsed * (task.total - task.completed) / task.completed)} left"
        self._console.print(f"{task.description}: {count} {_duration(elapsed)} elapsed{left}", highlight=False)


def progress_bar(console: Console, interval: float = 30.0) -> Progress | LineProgress:
    """A live bar on a terminal; periodic lines (every ``interval`` s and at the end) otherwise."""
    return Progress(console=console) if console.is_terminal else LineProgress(console, interval)


class Task(Protocol):
    """One stage of a long job, as a reporter shows it."""

    def advance(self, amount: float = 1.0) -> None: ...

    def describe(self, text: str) -> None: ...


class Reporter(Protocol):
    """Where a library job says what it does: notes, stages with progress, and short waits."""

    def note(self, message: str) -> None: ...

    def task(self, label: str, total: float | None = None) -> AbstractContextManager[Task]: ...

    def status(self, label: str) -> AbstractContextManager[object]: ...


class _NoTask:
    def advance(self, amount: float = 1.0) -> None:
        pass

    def describe(self, text: str) -> None:
        pass


class Quiet:
    """A reporter that shows nothing (the default of library calls, e.g. in a notebook)."""

    def note(self, message: str) -> None:
        pass

    @contextmanager
    def task(self, label: str, total: float | None = None) -> Iterator[Task]:
        yield _NoTask()

    def status(self, label: str) -> AbstractContextManager[object]:
        return nullcontext()


class _BarTask:
    def __init__(self, bar: Progress | LineProgress, task_id: TaskID) -> None:
        self._bar, self._id = bar, task_id

    def advance(self, amount: float = 1.0) -> None:
        self._bar.advance(self._id, amount)

    def describe(self, text: str) -> None:
        self._bar.update(self._id, description=text)


class ConsoleReporter:
    """Notes on ``out``; stages as :func:`progress_bar`\\ s on ``err`` (bars on a terminal, lines in a log)."""

    def __init__(self, out: Console, err: Console) -> None:
        self.out, self.err = out, err

    def note(self, message: str) -> None:
        self.out.print(message)

    @contextmanager
    def task(self, label: str, total: float | None = None) -> Iterator[Task]:
        with progress_bar(self.err) as bar:
            yield _BarTask(bar, bar.add_task(label, total=total))

    def status(self, label: str) -> AbstractContextManager[object]:
        return self.out.status(label)
