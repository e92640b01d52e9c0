"""`gpu-orch keys create|list|revoke`: API keys, straight in the stack's Postgres (an operator's
command: it works before any key exists and while the router is down). The admin HTTP routes
(/v1/admin/keys) do the same for an admin key."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..settings import Settings
from .base import cli

ADMIN_KEY_FILE = "admin_key"  # in GPU_ORCH_HOME, mode 600: the bootstrap admin key `gpu-orch up` made


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def resolve_database_url(explicit: str | None) -> str:
    """--database-url, else $DATABASE_URL, else the stack's (state.json of `gpu-orch up`)."""
    from ..ops import stack

    url = explicit or Settings().database_url or stack.load_state(Settings().home).get("database_url")
    if not url:
        raise click.ClickException("no database: pass --database-url, set DATABASE_URL, or start the stack "
                                   "with `gpu-orch up`")
    return url


def access(url: str):
    from gpu_orchestrator.store.access import PostgresAccess
    from gpu_orchestrator.store.postgres import create_engine, run_migrations

    engine = create_engine(url)
    run_migrations(engine)
    return PostgresAccess(engine)


def stack_api_key(url: str | None = None) -> str | None:
    """The key the CLI sends: $GPU_ORCH_API_KEY, else the stack's bootstrap admin key when `url` is
    that stack's (another stack would refuse a key it never made)."""
    from ..ops import stack

    key = os.environ.get("GPU_ORCH_API_KEY")
    if key:
        return key
    home = Settings().home
    if url is not None and stack.load_state(home).get("url", "").rstrip("/") != url.rstrip("/"):
        return None
    try:
        return (home / ADMIN_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def bootstrap_admin(url: str, home: Path) -> str | None:
    """The first `gpu-orch up` of a home: an admin key, stored in home/admin_key (600). Returns the
    token when one was made now (to print once), None when the home has one already."""
    from gpu_orchestrator.core.keys import Scope
    from gpu_orchestrator.store.access import KeyExists

    from ..ops import stack

    from gpu_orchestrator.store.access import PostgresAccess
    from gpu_orchestrator.store.postgres import create_engine

    path = home / ADMIN_KEY_FILE
    if path.exists():
        return None
    store = PostgresAccess(create_engine(url))  # `up` has just migrated the store
    name = "admin"
    for attempt in range(5):
        try:
            _, token = store.create_key(name=name, scopes=[Scope.admin])
            break
        except KeyExists:  # a database another home set up: a key of its own for this one
            name = f"admin-{os.urandom(3).hex()}"
    else:
        raise click.ClickException("could not create a bootstrap admin key")
    stack.write_private(path, token + "\n")
    store.engine.dispose()
    return token


@click.group()
def keys() -> None:
    """API keys: create (the token is shown once), list, revoke."""


@keys.command("create")
@click.option("--name", required=True, help="who or what uses it (one live key per name)")
@click.option("--scopes", required=True, help="comma-separated: submit, read, read:all, cancel, admin")
@click.option("--apps", default=None, help="comma-separated app ids it may submit to (default: all)")
@click.option("--quota-jobs-per-min", type=click.IntRange(1), default=None, help="jobs it may submit per minute")
@click.option("--max-queued", type=click.IntRange(1), default=None, help="jobs it may have queued or running at once")
@click.option("--database-url", default=None, help="default: $DATABASE_URL, else the stack's")
def create(name: str, scopes: str, apps: str | None, quota_jobs_per_min: int | None, max_queued: int | None,
           database_url: str | None) -> None:
    """Create a key. The token goes to stdout alone (KEY=$(gpu-orch keys create ...)); it is stored
    hashed and cannot be shown again."""
    from gpu_orchestrator.core.keys import Quota, name_problem, parse_scopes
    from gpu_orchestrator.store.access import KeyExists

    if why := name_problem(name):
        raise click.BadParameter(why, param_hint="--name")
    try:
        parsed = parse_scopes(_csv(scopes) or [])
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--scopes") from None
    store = access(resolve_database_url(database_url))
    try:
        key, token = store.create_key(name=name, scopes=parsed, apps=_csv(apps),
                                      quota=Quota(quota_jobs_per_min, max_queued))
    except KeyExists as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"created key {key.name} (id {key.id}): {_describe(key)}", err=True)
    click.echo("the token below is shown once; store it now:", err=True)
    click.echo(token)


def _describe(key) -> str:
    q = key.quota
    return (f"scopes {', '.join(sorted(s.value for s in key.scopes))}; apps {', '.join(sorted(key.apps)) if key.apps is not None else 'all'}"
            + (f"; {q.jobs_per_min} jobs/min" if q.jobs_per_min else "") + (f"; {q.max_queued} queued at most" if q.max_queued else ""))


@keys.command("list")
@click.option("--revoked", is_flag=True, help="include revoked keys")
@click.option("--database-url", default=None, help="default: $DATABASE_URL, else the stack's")
def list_(revoked: bool, database_url: str | None) -> None:
    """Every live key (never a token: only ids, names and what each may do)."""
    found = access(resolve_database_url(database_url)).keys(revoked=revoked)
    if not found:
        click.echo("no keys")
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else f"created {k.created_at:%Y-%m-%d %H:%M}"
        click.echo(f"{k.id}  {k.name:<20} {state}  {_describe(k)}")


@keys.command("revoke")
@click.argument("id_or_name")
@click.option("--database-url", default=None, help="default: $DATABASE_URL, else the stack's")
def revoke(id_or_name: str, database_url: str | None) -> None:
    """Revoke a key by id or name: refused at once by every router replica."""
    from gpu_orchestrator.store.access import KeyNotFound

    try:
        key = access(resolve_database_url(database_url)).revoke_key(id_or_name)
    except KeyNotFound as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"revoked key {key.name} (id {key.id})")


cli.add_command(keys)
