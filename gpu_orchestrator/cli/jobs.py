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
              help="save the result here (implies --wait): images as .png, a transcript as .txt and .srt, a reply as .txt")
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
        if not wait and not out_dir:
            _print(job)
            return
        click.echo(f"job {job['job_id']} {job['status']}", err=True)
        _attach(c, job["job_id"], out_dir)


def _attach(c: Client, job_id: str, out_dir: str | None = None) -> None:
    """Follow the job to its end (progress bar, a chat model's text), print it, save its outputs;
    exit 2 unless it succeeded. Ctrl-C stops following, not the job."""
    try:
        final = _follow(c, job_id)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job_id} goes on.\n"
                   f"  follow it again: gpu-orch follow {job_id[:8]}\n"
                   f"  cancel it:       gpu-orch cancel {job_id[:8]}", err=True)
        sys.exit(130)
    _print(final)
    if final["status"] == "succeeded" and out_dir:
        _save(c, final, Path(out_dir))
    if final["status"] != "succeeded":
        sys.exit(2)


def _save(c: Client, job: dict[str, Any], out_dir: Path) -> None:
    """What the UIs offer for download: images as PNG, a transcript as .txt and .srt, a reply as .txt."""
    from ..core.transcripts import to_srt, to_text

    out_dir.mkdir(parents=True, exist_ok=True)
    res, stem = job.get("result") or {}, job["job_id"][:8]
    written: list[tuple[Path, bytes | str]] = []
    for n, img in enumerate(res.get("images") or []):
        written.append((out_dir / f"{stem}-{n}.png", c.download(img["url"])))
    if "segments" in res:
        written += [(out_dir / f"{stem}.txt", to_text(res)), (out_dir / f"{stem}.srt", to_srt(res["segments"]))]
    elif isinstance(res.get("text"), str):
        written.append((out_dir / f"{stem}.txt", to_text(res)))
    if not written:
        click.echo(f"nothing to save: the result has no images or text (keys: {sorted(res)})", err=True)
    for path, data in written:
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
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
                if bar is None:  # starts at the first step seen: its rate counts steps from here on
                    bar = tqdm(total=total, desc=job_id[:8], unit="step", file=sys.stderr, initial=data.get("step", 0))
                else:
                    bar.update(data.get("step", bar.n) - bar.n)
            elif ev.get("event") == "progress" and "token" in data:
                click.echo(data["token"], nl=False, err=True)  # a chat model's text as it streams
                streaming = True
            elif ev.get("event") == "progress" and "stage" in data:
                say(f"stage: {data['stage']}")
            elif ev.get("event") == "waiting":  # its model is not loaded yet: which, and about how long
                say(str(data.get("message") or "waiting for its model"))
            elif ev.get("event") == "gap":
                say("event stream was unavailable for a while: some progress events may be missing")
            elif ev.get("event") == "status":
                if data["status"] in TERMINAL and bar is not None:  # drawn once more now, not after the result
                    bar.close()
                    bar = None
                say(f"status: {data['status']}" + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
                if data["status"] in TERMINAL:
                    break
    finally:
        if bar is not None:
            bar.close()
    return c.wait(job_id)


def _resolve(c: Client, job_id: str) -> str:
    try:
        return c.resolve(job_id)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="JOB_ID") from None


@cli.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="follow it to its end with the progress bar (as `follow`)")
@click.pass_context
def status(ctx: click.Context, job_id: str, wait: bool) -> None:
    """Show one job. JOB_ID may be its first hex digits (4 or more), as the progress bar shows it."""
    with _client(ctx) as c:
        full = _resolve(c, job_id)
        if wait:
            _attach(c, full)
        else:
            _print(c.get(full))


@cli.command()
@click.argument("job_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="save the result here, as submit --out")
@click.pass_context
def follow(ctx: click.Context, job_id: str, out_dir: str | None) -> None:
    """Follow a job to its end (progress bar), then print it: e.g. after Ctrl-C on `submit --wait`."""
    with _client(ctx) as c:
        _attach(c, _resolve(c, job_id), out_dir)


@cli.command()
@click.option("--app", "app_id", default=None)
@click.option("--status", "status_", default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--cursor", default=None, help="the next page: the cursor the previous page printed")
@click.pass_context
def jobs(ctx: click.Context, app_id: str | None, status_: str | None, limit: int, cursor: str | None) -> None:
    """List recent jobs, newest first."""
    with _client(ctx) as c:
        page = c.list(app_id=app_id, status=status_, limit=limit, cursor=cursor)
    for j in page["jobs"]:
        wait = j.get("waiting_for")
        click.echo(f"{j['job_id']}  {j['app_id']:<16} {j['status']:<10} attempts={j['attempts']}  {j['created_at']}"
                   + (f"  waiting for {wait['model']} ({wait['state']})" if wait else ""))
    if page["next_cursor"]:
        click.echo(f"(more: gpu-orch jobs --cursor {page['next_cursor']}" + (f" --limit {limit}" if limit != 20 else "")
                   + (f" --app {app_id}" if app_id else "") + (f" --status {status_}" if status_ else "") + ")")


@cli.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a queued or running job. JOB_ID may be its first hex digits (4 or more)."""
    with _client(ctx) as c:
        _print(c.cancel(_resolve(c, job_id)))
