"""The ``personalize`` console command: the library's commands plus the service's (serve, ui, demo).

    python -m app.cli ...      the same as the installed ``personalize``

Command groups live one per module (:mod:`personalize.commands`, :mod:`personalize.db.cli`,
:mod:`app.service_commands`); this module only mounts them.
"""

from __future__ import annotations

import typer

from app.service_commands import demo, serve, ui
from personalize.cli import HELP, add_library_commands, configure_logging


def add_service_commands(root: typer.Typer) -> typer.Typer:
    root.command("serve")(serve)
    root.command("ui")(ui)
    root.command()(demo)
    return root


app = add_service_commands(add_library_commands(typer.Typer(help=HELP, no_args_is_help=True)))


def main() -> None:
    configure_logging()
    app()


if __name__ == "__main__":
    main()
