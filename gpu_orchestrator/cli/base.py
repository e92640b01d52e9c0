"""The `gpu-orch` command group, its client and its output."""


from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..client import DEFAULT_URL, ApiError, Client

APP_NAME = "orchestrator"


def _client(ctx: click.Context) -> Client:
    from .keys import stack_api_key

    return Client(ctx.obj["url"], api_key=ctx.obj.get("api_key") or stack_api_key(ctx.obj["url"]))


def _print(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group()
@click.option("--url", envvar="GPU_ORCH_URL", default=DEFAULT_URL, show_default=True, help="router base URL")
@click.option("--api-key", envvar="GPU_ORCH_API_KEY", default=None,
              help="API key (default: the stack's admin key that `gpu-orch up` stored)")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """GPU Orchestrator: many AI models on shared GPUs."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url
    ctx.obj["api_key"] = api_key


def main() -> None:
    try:
        cli(obj={})
    except ApiError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


# -- stack lifecycle --------------------------------------------------------------------------------
