"""CLI commands for the database and users (Typer sub-apps, mounted by ``personalize.cli``).

personalize db upgrade [REVISION]        migrate (holds a lock: safe from several replicas)
personalize db downgrade REVISION
personalize db current
personalize users create NAME [--admin] [--json]
personalize users list
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from personalize.db import migrate
from personalize.db.errors import AlreadyExistsError
from personalize.db.session import Database
from personalize.db.users import UserStore
from personalize.errors import ConfigError
from personalize.settings import Settings

db_app = typer.Typer(help="The registry and profile database (SQLite by default, or DATABASE_URL).")
users_app = typer.Typer(help="Users and their API keys.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _database_url() -> str:
    settings = Settings()
    if settings.should_auto_migrate:
        migrate.upgrade(settings.database_url)
    return settings.database_url


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Bring the schema to REVISION (default: the newest)."""
    url = Settings().database_url
    migrate.upgrade(url, revision)
    console.print(f"database at revision [bold]{migrate.current_revision(url)}[/bold]")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision, or 'base'.")]) -> None:
    """Take the schema back to REVISION ('base' drops every table)."""
    url = Settings().database_url
    migrate.downgrade(url, revision)
    console.print(f"database at revision [bold]{migrate.current_revision(url) or 'base'}[/bold]")


@db_app.command("current")
def db_current() -> None:
    """Show the schema's revision and whether it is the newest."""
    url = Settings().database_url
    current, head = migrate.current_revision(url), migrate.head_revision()
    state = "up to date" if current == head else f"behind (newest is {head})"
    console.print(f"{current or 'base'}: {state}")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="A unique user name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Give the user admin scope.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with id and api_key.")] = False,
) -> None:
    """Create a user and print its API key (shown only this once)."""
    db = Database(_database_url())
    try:
        created = UserStore(db).create(name, "admin" if admin else "user")
    except (AlreadyExistsError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        db.dispose()
    user = created.user
    if as_json:
        payload = {"id": user.id, "name": user.name, "role": user.role, "api_key": created.api_key}
        typer.echo(json.dumps(payload))
        return
    console.print(f"created {user.role} [bold]{user.name}[/bold] (id {user.id})")
    console.print(f"API key (shown only now): [bold]{created.api_key}[/bold]")


@users_app.command("list")
def users_list() -> None:
    """List users (names, roles, key prefixes; never keys)."""
    db = Database(_database_url())
    try:
        for user in UserStore(db).all():
            console.print(f"{user.id}  {user.role:5}  {user.name}  {user.key_prefix}…")
    finally:
        db.dispose()
