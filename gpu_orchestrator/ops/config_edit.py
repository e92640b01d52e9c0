"""serve_config.yaml edited as text (`gpu-orch new-app`): entries added to the orchestrator
application's models and apps where the existing ones are, so the file's comments and layout stay."""

from __future__ import annotations

from typing import Any, Callable

import yaml

CONFIG = "serve_config.yaml"
APP_NAME = "orchestrator"  # the Serve application that holds the models and apps
BUILD_APP = "serve_apps.orchestrator:build_app"


class ConfigEditError(ValueError):
    """The file cannot be edited in place (not YAML, no orchestrator args, an unusual layout)."""


def flow(value: Any) -> str:
    """One value as single-line YAML (flow style for collections), quoted where YAML needs it."""
    text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, sort_keys=False).strip()
    return text[1:-1]


def scalar(value: Any) -> str:
    """One scalar as YAML in block context (where commas need no quotes)."""
    return yaml.safe_dump({"k": value}, default_flow_style=False, width=1 << 30).strip()[len("k: "):]


def get_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def orchestrator_args_node(root_node: yaml.Node) -> yaml.MappingNode:
    apps = get_node(root_node, "applications")
    items = apps.value if isinstance(apps, yaml.SequenceNode) else []
    named = [a for a in items if getattr(get_node(a, "name"), "value", None) == APP_NAME]
    built = [a for a in items if getattr(get_node(a, "import_path"), "value", None) == BUILD_APP]
    app = (named or built or [None])[0]
    args = get_node(app, "args") if app is not None else None
    if not isinstance(args, yaml.MappingNode):
        raise ConfigEditError(f"{CONFIG} has no application {APP_NAME!r} (import_path {BUILD_APP}) with an `args` mapping")
    return args


def block_end(lines: list[str], start: int, indent: int) -> int:
    """The last line of the block entry that starts on line `start` at column `indent`: the lines
    after it that are blank, comments, or indented deeper belong to it (trailing blanks and comments
    belong to what follows)."""
    last = start
    for i in range(start + 1, len(lines)):
        s = lines[i].strip()
        if not s or s.startswith("#"):
            continue
        if len(lines[i]) - len(lines[i].lstrip(" ")) <= indent:
            break
        last = i
    return last


def insert(text: str, model_block: Callable[[int, int], list[str]], app_block: Callable[[int, int], list[str]],
           hint: str) -> str:
    """serve_config.yaml's text with a model entry inserted after the last model and an app after the
    last app of the orchestrator application; comments and layout kept. `model_block(indent, step)`
    gives the model's lines at the models' indentation; `app_block(dash, col)` the app's, its dash at
    column `dash` and its keys at `col`. `hint`: what to run to see the entries when they cannot be
    placed (ConfigEditError names it)."""
    try:
        args = orchestrator_args_node(yaml.compose(text))
    except yaml.YAMLError as e:
        raise ConfigEditError(f"{CONFIG} is not valid YAML: {e}") from None
    models, apps = get_node(args, "models"), get_node(args, "apps")
    for key, node, kind in (("models", models, yaml.MappingNode), ("apps", apps, yaml.SequenceNode)):
        if not isinstance(node, kind) or not node.value or node.flow_style:
            raise ConfigEditError(f"{CONFIG}: the {APP_NAME} application's args.{key} must be a non-empty block "
                                  f"{'mapping' if key == 'models' else 'list'} for new-app to add to it; add the "
                                  f"entry by hand ({hint} shows it)")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    # models: after the last entry, at the entries' indentation.
    key0, val0 = models.value[0]
    indent = key0.start_mark.column
    nested = isinstance(val0, yaml.MappingNode) and not val0.flow_style and val0.start_mark.line > key0.start_mark.line
    step = val0.start_mark.column - indent if nested and val0.start_mark.column > indent else 2
    after_model = block_end(lines, models.value[-1][0].start_mark.line, indent)
    model_lines = model_block(indent, step)
    # apps: after the last item, at the items' dash column.
    first = apps.value[0]
    line = lines[first.start_mark.line][:first.start_mark.column]
    if not line.rstrip().endswith("-"):
        raise ConfigEditError(f"{CONFIG}: cannot tell where args.apps items start (line {first.start_mark.line + 1})")
    dash = len(line.rstrip()) - 1
    after_app = block_end(lines, apps.value[-1].start_mark.line, dash)
    app_lines = app_block(dash, first.start_mark.column)
    for at, block in sorted(((after_model, model_lines), (after_app, app_lines)), key=lambda x: x[0], reverse=True):
        lines[at + 1:at + 1] = [ln + "\n" for ln in block]
    return "".join(lines)


def orchestrator_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """The orchestrator application's args in a parsed serve_config.yaml."""
    apps = cfg.get("applications") or []
    app = next((a for a in apps if a.get("name") == APP_NAME), None) or next(
        a for a in apps if a.get("import_path") == BUILD_APP)
    return app["args"]
