"""`gpu-orch logs [router|MODEL|controller|proxy]`: the Serve log of one part of the stack, from the
Ray session `gpu-orch up` started (the head's files on this machine)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import click

from .base import APP_NAME, cli


def serve_logs(session_dir: Path, what: str, app: str = APP_NAME) -> list[Path]:
    """The log files of `what` in a Ray session, newest last: a deployment's replicas
    (replica_<app>_<deployment>_<id>.log), or Serve's controller or proxy."""
    logs = session_dir / "logs" / "serve"
    pattern = {"controller": "controller_*.log", "proxy": "proxy_*.log"}.get(what, f"replica_{app}_{what}_*.log")
    return sorted(logs.glob(pattern), key=lambda p: p.stat().st_mtime)


def known(session_dir: Path, app: str = APP_NAME) -> list[str]:
    prefix = f"replica_{app}_"
    names = {p.name[len(prefix):].rsplit("_", 1)[0] for p in (session_dir / "logs" / "serve").glob(prefix + "*.log")}
    return sorted(names) + ["controller", "proxy"]


@cli.command()
@click.argument("what", default="router")
@click.option("-n", "--lines", type=click.IntRange(0), default=50, show_default=True, help="last lines of each file")
@click.option("-f", "--follow", is_flag=True, help="keep printing what is written")
@click.option("--app", default=APP_NAME, show_default=True, help="the Serve application")
def logs(what: str, lines: int, follow: bool, app: str) -> None:
    """The Serve log of WHAT: router (the default), a model deployment (sdxl, whisper, llm, ...),
    controller or proxy; every replica's file, newest last."""
    from ..ops import stack
    from ..settings import Settings

    home = Settings().home
    session = stack.load_state(home).get("ray_session_dir")
    if not session or not Path(session).is_dir():
        raise click.ClickException(f"no Ray session of a stack on this machine under {home} (`gpu-orch up` records it); "
                                   f"on a cluster: eval \"$(gpu-orch env)\" && ray logs cluster")
    files = serve_logs(Path(session), what, app)
    if not files:
        raise click.BadParameter(f"no Serve log for {what!r} in {session}/logs/serve (there are: "
                                 f"{', '.join(known(Path(session), app))})", param_hint="WHAT")
    for path in files:
        click.echo(f"==> {path} <==")
        with path.open(errors="replace") as f:
            for line in deque(f, maxlen=lines) if lines else ():
                click.echo(line, nl=False)
    if follow:
        _follow(files)


def _follow(files: list[Path]) -> None:
    handles = [p.open(errors="replace") for p in files]
    for h in handles:
        h.seek(0, 2)
    try:
        while True:
            quiet = True
            for path, h in zip(files, handles):
                line = h.readline()
                while line:
                    quiet = False
                    click.echo(f"{path.name}: {line}", nl=False)
                    line = h.readline()
            if quiet:
                time.sleep(0.5)  # a tail's poll: nothing to wake on for plain files
    except KeyboardInterrupt:
        pass
