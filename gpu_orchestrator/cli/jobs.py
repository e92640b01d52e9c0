"""`gpu-orch submit`, `status`, `jobs`, `cancel`: jobs from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..client import TERMINAL, Client
from .base import _client, _print, cli

def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-p/--param")
        # Values are sent as strings unless they are JSON literals; the router coerces by schema.
        try:
            out[key] = json.loads(value) if value[:1] in "[{\"" or value in ("true", "false", "null") else value
        except json.JSONDecodeError:
            out[key] = value
    return out


@cli.command()
@click.argument("app_id")
@click.option("-p", "--param", "params", multiple=True, help="key=value (repeatable)")
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--idempotency-key", default=None)
@click.option("-f", "--file", "files", multiple=True, help="name=path: upload a local file for a file parameter (repeatable)")
@click.option("--wait", is_flag=True, help="follow progress, then print the result")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="with --wait: save the result's images here")
@click.pass_context
def submit(ctx: click.Context, app_id: str, params: tuple[str, ...], files: tuple[str, ...], priority: int,
           idempotency_key: str | None, wait: bool, out_dir: str | None) -> None:
    """Submit a job to APP_ID."""
    with _client(ctx) as c:
        p = _parse_params(params)
        for pair in files:
            name, sep, path = pair.partition("=")
            if not sep or not name or not Path(path).is_file():
                raise click.BadParameter(f"{pair!r} is not name=path of an existing file", param_hint="-f/--file")
            p[name] = c.upload(path)
        job = c.submit(app_id, p, priority=priority, idempotency_key=idempotency_key)
        if not wait:
            _print(job)
            return
        click.echo(f"job {job['job_id']} queued", err=True)
        final = _follow(c, job["job_id"])
        _print(final)
        if final["status"] == "succeeded" and out_dir:
            _save_images(c, final, Path(out_dir))
        if final["status"] != "succeeded":
            sys.exit(2)


def _save_images(c: Client, job: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, img in enumerate((job.get("result") or {}).get("images", [])):
        path = out_dir / f"{job['job_id'][:8]}-{n}.png"
        path.write_bytes(c.download(img["url"]))
        click.echo(f"saved {path}", err=True)


def _follow(c: Client, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    bar = None
    streaming = False  # a chat model's text is being printed: end the line before a status line

    def say(msg: str) -> None:
        nonlocal streaming
        if streaming:
            click.echo("", err=True)
            streaming = False
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            click.echo(msg, err=True)

    try:
        for ev in c.events(job_id):
            data = ev["data"]
            total = data.get("total") or data.get("steps")
            if ev.get("event") == "progress" and total:
                if bar is None:
                    bar = tqdm(total=total, desc=job_id[:8], unit="step", file=sys.stderr)
                bar.n = data.get("step", bar.n)
                bar.refresh()
            elif ev.get("event") == "progress" and "token" in data:
                click.echo(data["token"], nl=False, err=True)  # a chat model's text as it streams
                streaming = True
            elif ev.get("event") == "progress" and "stage" in data:
                say(f"stage: {data['stage']}")
            elif ev.get("event") == "gap":
                say("event stream was unavailable for a while: some progress events may be missing")
            elif ev.get("event") == "status":
                say(f"status: {data['status']}" + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
                if data["status"] in TERMINAL:
                    break
    finally:
        if bar is not None:
            bar.close()
    return c.wait(job_id)


@cli.command()
@click.argument("job_id")
@click.pass_context
def status(ctx: click.Context, job_id: str) -> None:
    """Show one job."""
    with _client(ctx) as c:
        _print(c.get(job_id))


@cli.command()
@click.option("--app", "app_id", default=None)
@click.option("--status", "status_", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def jobs(ctx: click.Context, app_id: str | None, status_: str | None, limit: int) -> None:
    """List recent jobs, newest first."""
    with _client(ctx) as c:
        page = c.list(app_id=app_id, status=status_, limit=limit)
    for j in page["jobs"]:
        click.echo(f"{j['job_id']}  {j['app_id']:<16} {j['status']:<10} attempts={j['attempts']}  {j['created_at']}")
    if page["next_cursor"]:
        click.echo(f"(more: --cursor {page['next_cursor']})")


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    with _client(ctx) as c:
        _print(c.cancel(job_id))
