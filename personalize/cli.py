"""The library's command line: ``python -m personalize.cli`` (generate, heads, eval, db, users).

The installed ``personalize`` command is the service's (``app.cli``), which adds ``serve``, ``ui``
and ``demo`` to these. Each command group lives in its own module under
:mod:`personalize.commands` (and :mod:`personalize.db.cli`); this one only mounts them.
"""

from __future__ import annotations

import logging

import typer

from personalize.commands.evaluate import evaluate
from personalize.commands.generate import generate
from personalize.commands.heads import heads_app
from personalize.db.cli import db_app, users_app

HELP = "Personalize a frozen language model at decoding time."


def add_library_commands(root: typer.Typer) -> typer.Typer:
    """Mount the library's commands and groups on ``root``; returns it."""
    root.command()(generate)
    root.command("eval")(evaluate)
    root.add_typer(heads_app, name="heads")
    root.add_typer(db_app, name="db")
    root.add_typer(users_app, name="users")
    return root


app = add_library_commands(typer.Typer(help=HELP, no_args_is_help=True))


def configure_logging() -> None:
    """Warnings and errors on stderr; no per-file weight-loading bars (ours say what happens)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main() -> None:
    configure_logging()
    app()


if __name__ == "__main__":
    main()
