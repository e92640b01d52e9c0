"""Which apps a page offers: the router's apps of the page's task (GET /v1/apps, AppSpec.task), read
when the page loads, so an app added to the config (`gpu-orch new-app NAME --task ...`) shows up
in its page with no UI change. Pure but for `read_apps` and the page updates built on it
(`choice_updates`, `field_updates`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from gradio_uis.common import app_param, client, error_html, explain, param_info

Choice = tuple[str, str]  # (label, app id), as gr.Radio takes it


@dataclass(frozen=True)
class Offer:
    choices: list[Choice]
    value: str
    note: str | None = None  # what the page says when the router lists no app of its task


def app_choices(apps: list[dict[str, Any]], task: str) -> list[Choice]:
    """The apps of one task, in the config's order, each labelled by its name (its id when it has
    none; name and id when two share a name)."""
    mine = [a for a in apps if a.get("task") == task]
    count = Counter(a.get("name") or a["id"] for a in mine)
    out = []
    for a in mine:
        label = a.get("name") or a["id"]
        out.append((f"{label} [{a['id']}]" if count[label] > 1 else label, a["id"]))
    return out


def offer(apps: list[dict[str, Any]] | None, task: str, builtin: list[Choice], default: str,
          current: str | None = None) -> Offer:
    """What a page's model choice shows. `apps`: GET /v1/apps's list, or None when it could not be
    read (the page shows that error): then the built-in choices stay. The value: the one chosen
    (`current`) while it is still offered, else `default` when offered, else the first."""
    found = None if apps is None else app_choices(apps, task)
    choices = found or builtin
    ids = [i for _, i in choices]
    value = current if current in ids else default if default in ids else ids[0] if ids else default
    note = (f"the orchestrator has no app with task {task!r} (GET /v1/apps): add one to its config "
            f"(gpu-orch new-app NAME --task ...)") if found == [] else None
    return Offer(choices, value, note)


def find_app(apps: list[dict[str, Any]] | None, app_id: str | None) -> dict[str, Any] | None:
    return next((a for a in apps or [] if a.get("id") == app_id), None)


def default_of(app: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """{"value": the app's default for the param}, or {} (the field keeps what it shows)."""
    p = app_param(app, name)
    return {"value": p["default"]} if p is not None and p.get("default") is not None else {}


async def read_apps(url: str, request: Any = None) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(GET /v1/apps's list, None), or (None, why it could not be read, as the user reads it)."""
    try:
        async with client(url, request) as c:
            return await c.apps(), None
    except Exception as e:
        return None, explain(e)


async def choice_updates(url: str, request: Any, pick: Callable[[list[dict[str, Any]] | None, str | None], Offer],
                         current: str | None) -> tuple[list[dict[str, Any]] | None, Offer, list[Any]]:
    """On a page's load: GET /v1/apps, the model choice `pick` makes of it, and the updates of the
    choice and of the page's error box (why the apps could not be read, or that none has the task)."""
    apps, problem = await read_apps(url, request)
    o = pick(apps, current)
    note = problem or o.note
    return apps, o, [gr.update(choices=o.choices, value=o.value), error_html(note) if note else gr.skip()]


def field_updates(app: dict[str, Any] | None, names: Any, *, defaults: bool = True) -> list[Any]:
    """Each input's hint (the app's default and limits; the router still checks) and, with
    `defaults`, its value set to the app's default."""
    return [gr.update(info=param_info(app, n), **(default_of(app, n) if defaults else {})) for n in names]
