"""`gpu-orch keys create|list|revoke`: API keys, straight in the stack's Postgres (an operator's
command: it works before any key exists and while the router is down). The admin HTTP routes
(/v1/admin/keys) do the same for an admin key."""

from __future__ import annotations


import click

from ..settings import Settings
from .base import cli

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
    from gpu_orchestrator.store.pg_engine import create_engine, run_migrations

    engine = create_engine(url)
    run_migrations(engine)
    return PostgresAccess(engine)


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
