"""The `gpu-orch` command group, its client and its output."""


from __future__ import annotations

import json
from typing import Any

import click
import httpx

from ..client import DEFAULT_URL, ApiError, Client

from ..ops.config_edit import APP_NAME  # noqa: F401 (the commands' default app)


def _client(ctx: click.Context) -> Client:
    from ..ops.admin_key import stack_api_key

    return Client(ctx.obj["url"], api_key=ctx.obj.get("api_key") or stack_api_key(ctx.obj["url"]))


def stack_url() -> str:
    """The URL of the stack `gpu-orch up` started in GPU_ORCH_HOME (its state.json), else the default."""
    from ..ops import stack
    from ..settings import Settings

    try:
        return stack.load_state(Settings().home).get("url") or DEFAULT_URL
    except Exception:  # an unreadable state file: the default, as without one
        return DEFAULT_URL


def _print(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


class _Group(click.Group):
    """Errors from the router or the network end as click's own do: one `Error:` line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as e:
            raise click.ClickException(str(e)) from None
        except httpx.TimeoutException as e:
            url = (ctx.obj or {}).get("url", DEFAULT_URL)
            raise click.ClickException(f"the router at {url} did not answer in time ({type(e).__name__}); "
                                       f"it may be busy: try again") from None
        except httpx.TransportError as e:
            url = (ctx.obj or {}).get("url", DEFAULT_URL)
            raise click.ClickException(f"cannot reach the router at {url} ({type(e).__name__}: {e}); is the stack up "
                                       f"(`gpu-orch up`), or is --url / $GPU_ORCH_URL another address?") from None


@click.group(cls=_Group)
@click.version_option(package_name="gpu-orchestrator", prog_name="gpu-orch")
@click.option("--url", envvar="GPU_ORCH_URL", default=None,
              help=f"router base URL (default: the stack `gpu-orch up` started, else {DEFAULT_URL})")
@click.option("--api-key", envvar="GPU_ORCH_API_KEY", default=None,
              help="API key (default: the stack's admin key that `gpu-orch up` stored)")
@click.pass_context
def cli(ctx: click.Context, url: str, api_key: str | None) -> None:
    """GPU Orchestrator: many AI models on shared GPUs."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url or stack_url()
    ctx.obj["api_key"] = api_key


def main() -> None:
    cli(obj={})


# -- stack lifecycle --------------------------------------------------------------------------------
