"""CLI commands for the database and users (Typer sub-apps, mounted by ``personalize.cli``).

personalize db upgrade [REVISION]        migrate (holds a lock: safe from several replicas)
personalize db downgrade REVISION
personalize db current
personalize users create NAME [--admin] [--json]
personalize users list
personalize users keys USER                       a user's keys (prefixes, dates, status; never a key)
personalize users rotate-key USER [--grace S] [--expires-in S] [--json]
personalize users revoke USER [--key KEY_ID]      revoke all the user's keys (or one)

USER is a user id or name. Key changes are announced on Redis (REDIS_URL) so that
running replicas forget the old key at once; without Redis they follow within
their authentication cache TTL (PERSONALIZE_AUTH_CACHE_STALE_S, at most 30 s).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from personalize.db import migrate
from personalize.db.errors import AlreadyExistsError, NotFoundError
from personalize.db.keys import ApiKeyStore
from personalize.db.models import utcnow
from personalize.db.records import ApiKeyRecord
from personalize.db.session import Database
from personalize.db.users import UserStore
from personalize.errors import ConfigError
from personalize.key_events import publish_key_change
from personalize.settings import Settings

T = TypeVar("T")

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


def _with_keys(action: Callable[[ApiKeyStore], T]) -> T:
    """Run ``action`` on the key store; a store error is printed and exits 1."""
    db = Database(_database_url())
    try:
        return action(ApiKeyStore(db))
    except (NotFoundError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        db.dispose()


def _announce(user_id: str) -> None:
    settings = Settings()
    if not publish_key_change(settings.redis_url, settings.redis_prefix, user_id, "cli") and settings.redis_url:
        err.print("[yellow]Redis unreachable: running replicas follow within their auth cache TTL[/yellow]")


def _key_line(key: ApiKeyRecord) -> str:
    ends = f"  expires {key.expires_at.isoformat()}" if key.expires_at and not key.revoked_at else ""
    return f"{key.id}  {key.prefix}…  {key.status(utcnow()):7}  created {key.created_at.isoformat()}{ends}"


@users_app.command("keys")
def users_keys(user: Annotated[str, typer.Argument(help="User id or name.")]) -> None:
    """List a user's API keys (prefixes, dates and status; never the keys)."""

    def listing(keys: ApiKeyStore) -> list[ApiKeyRecord]:
        return keys.keys(UserStore(keys.db).get(user).id)

    for key in _with_keys(listing):
        console.print(_key_line(key), highlight=False)


@users_app.command("rotate-key")
def users_rotate_key(
    user: Annotated[str, typer.Argument(help="User id or name.")],
    grace: Annotated[int, typer.Option("--grace", help="Seconds the old keys keep working (default 0).")] = 0,
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", help="The new key stops working after this many seconds.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print one JSON object: {"api_key": ...}.')] = False,
) -> None:
    """Issue a new API key for USER; their other keys stop now (or after --grace seconds)."""
    expires = utcnow() + timedelta(seconds=expires_in) if expires_in is not None else None
    issued = _with_keys(lambda keys: keys.rotate(user, actor_id=None, grace_s=grace, expires_at=expires))
    _announce(issued.record.user_id)
    if as_json:
        typer.echo(
            json.dumps({"api_key": issued.api_key, "key_id": issued.record.id, "user_id": issued.record.user_id})
        )
        return
    console.print(f"new key for {user} (id {issued.record.id}), shown only now: [bold]{issued.api_key}[/bold]")
    for key in issued.retired:
        console.print(f"retired: {_key_line(key)}", highlight=False)


@users_app.command("revoke")
def users_revoke(
    user: Annotated[str, typer.Argument(help="User id or name.")],
    key: Annotated[str | None, typer.Option("--key", help="Revoke only this key id (default: all).")] = None,
) -> None:
    """Revoke USER's API keys (all of them, or --key one): they get 401 from now on."""
    revoked = _with_keys(lambda keys: keys.revoke(user, actor_id=None, key_id=key))
    user_id = revoked[0].user_id if revoked else _with_keys(lambda keys: UserStore(keys.db).get(user).id)
    _announce(user_id)
    console.print(f"revoked {len(revoked)} key(s) of {user}")
    for record in revoked:
        console.print(f"  {_key_line(record)}", highlight=False)
