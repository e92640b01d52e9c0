"""`gpu-orch apps`, `workers`, `arbiter`, `costs`, `prune`, `render`, `import-seed`, `new-app`."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from .base import _client, cli


@cli.command()
@click.pass_context
def apps(ctx: click.Context) -> None:
    """List apps and their parameters."""
    with _client(ctx) as c:
        for a in c.apps():
            tag = " [SYNTHETIC]" if a.get("synthetic") else ""
            vram = f", {a['vram_gb']:g} GB" if a.get("vram_gb") else ""
            click.echo(f"{a['id']}{tag}: {a['name']} ({a['kind']}, model {a['deployment'] or '-'}{vram})")
            for p in a["parameters"]:
                extra = ", ".join(f"{k}={_num(p[k])}" for k in ("default", "minimum", "maximum", "choices") if p.get(k) is not None)
                click.echo(f"    {p['name']}: {p['type']}{' (required)' if p['required'] else ''}{'  ' + extra if extra else ''}")


def _num(v: Any) -> Any:
    """1024.0 -> 1024 (JSON numbers of integer parameters come back as floats)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return "[" + ", ".join(str(_num(x)) for x in v) + "]"
    return v


def _replicas(states: dict[str, int]) -> str:
    """{"RUNNING": 1, "STARTING": 1} -> "1 running, 1 starting"."""
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "no replicas"


def _vram(m: dict[str, Any]) -> str:
    declared, held = m.get("vram_declared_gb") or 0, m.get("vram_held_gb")
    host = f", {m['host_held_gb']:.1f} GB parked in host memory" if m.get("host_held_gb") else ""
    if not declared and held is None:
        return "no VRAM declared" + host
    return f"VRAM {'-' if held is None else f'{held:.1f}'} of {declared:g} GB held{host}"


def _replica_line(r: dict[str, Any]) -> str:
    if r.get("load_time_s") is None:
        return f"    {r['replica_id']}  {r['state']}"
    warm = f" wake={r['wake_time_s']:.2f}s" if r.get("wake_time_s") is not None else ""
    return f"    {r['replica_id']}  {r['state']:<9} load={r['load_time_s']:.2f}s{warm}  jobs={r['jobs_done']}  pid={r['pid']}"


@cli.command()
@click.pass_context
def workers(ctx: click.Context) -> None:
    """Model deployments: replicas, their state, queue depth."""
    import datetime as dt

    with _client(ctx) as c:
        data = c.http.get("/v1/workers").json()
    for m in data["models"]:
        tag = " [SYNTHETIC]" if m.get("synthetic") else ""
        used = dt.datetime.fromtimestamp(m["last_used"]).strftime("%H:%M:%S") if m.get("last_used") else "never"
        click.echo(f"{m['deployment']}{tag}: {m['state']}  {_replicas(m['replica_states'])} (target {m['target_replicas']})  "
                   f"{_vram(m)}  queued {m['queued']}, running {m['running']}  last used {used}")
        arb = m.get("arbiter") or {}
        if arb.get("last_decision"):
            click.echo(f"    last decision: {arb['last_decision']}  (loads {arb['loads']}, evictions {arb['evictions']})")
        if m.get("load_error"):
            click.echo(f"    load error: {m['load_error']}")
        for r in m["replicas"]:
            click.echo(_replica_line(r))
    arbiter = data.get("arbiter")
    if arbiter:
        click.echo(f"arbiter: leader {arbiter['leader']}, dispatchable {arbiter['dispatchable']}, draining {arbiter['draining']}")
        for line in _gpu_lines(data):
            click.echo(f"  {line}")
        for node, h in sorted((arbiter.get("hosts") or {}).items()):
            if h.get("budget_gb"):  # the warm tier is on
                free = f", {h['free_gb']:g} GB free" if h.get("free_gb") is not None else ""
                click.echo(f"  host {node[:12]}: warm copies hold {h['held_gb']:g} of {h['budget_gb']:g} GB{free}")
        credit = arbiter.get("swap_credit_s") or {}
        if credit:
            click.echo("  swap budget left: " + ", ".join(f"{g} {c:g} s" for g, c in credit.items()))
        for reason in arbiter["reasons"]:
            click.echo(f"    {reason}")
    for c in data.get("cloud") or []:
        state = "available" if c["available"] else f"UNAVAILABLE: {c['reason']}"
        click.echo(f"cloud {c['backend']}: {state}  apps {c['apps'] or '-'}  fallback for {c['fallback_for'] or '-'}")


def _gpu_lines(data: dict[str, Any]) -> list[str]:
    """Per GPU the arbiter places models on: its VRAM held (declared by the models on it) of its size,
    and which models; a virtual GPU (the demo's) says so."""
    placed: dict[str, list[str]] = {}
    for m in data.get("models") or ():
        for g in (m.get("arbiter") or {}).get("placement") or ():
            if m["state"] != "cold":
                placed.setdefault(g, []).append(f"{m['deployment']} ({m['state']})")
    out = []
    for gid, g in sorted(((data.get("arbiter") or {}).get("gpus") or {}).items()):
        tag = " VIRTUAL (accounting only: the models run on CPU)" if g.get("virtual") else ""
        out.append(f"gpu {gid}{tag}: {g['held_gb']:g} of {g['vram_gb']:g} GB held"
                   + (f": {', '.join(placed[gid])}" if placed.get(gid) else ""))
    return out


@cli.command()
@click.option("--last", type=click.IntRange(1, 100), default=30, show_default=True, help="how many decisions to show")
@click.pass_context
def arbiter(ctx: click.Context, last: int) -> None:
    """What the GPU arbiter did: its GPUs, each model's loads, evictions and load time, and its
    latest decisions (which model waited, which was evicted for which, how long each load took)."""
    import datetime as dt

    with _client(ctx) as c:
        data = c.http.get("/v1/workers").json()
    arb = data.get("arbiter")
    if not arb:
        raise click.ClickException("the arbiter is off in this stack (arbiter.enabled; the demo turns it on with "
                                   "demo.virtual_gpu_gb): every model keeps its replicas")
    for line in _gpu_lines(data):
        click.echo(line)
    click.echo(f"{'model':<16} {'state':<10} {'VRAM GB':>8} {'loads':>6} {'evictions':>10}  load time")
    for m in data["models"]:
        a = m.get("arbiter") or {}
        measured = a.get("load_measured_s")
        took = f"{measured:.1f} s measured" if measured is not None else f"{a.get('load_s', 0):g} s expected (not loaded yet)"
        if measured is not None and m.get("load_time_s") is not None:  # the cold path, split
            took += f" (load step {m['load_time_s']:.1f} s, the rest the replica's start)"
        if a.get("warm_load_measured_s") is not None:
            took += f"; warm {a['warm_load_measured_s']:.2f} s"
        vram = a.get("vram_packed_gb", m.get("vram_declared_gb") or 0)
        flag = "  DECLARED BELOW MEASURED PEAK" if a.get("vram_declared_below_measured") else ""
        click.echo(f"{m['deployment']:<16} {m['state']:<10} {vram:>8g} {a.get('loads', 0):>6} "
                   f"{a.get('evictions', 0):>10}  {took}{flag}")
    click.echo("decisions (oldest first):")
    for ts, text in (arb.get("history") or [])[-last:]:
        click.echo(f"  {dt.datetime.fromtimestamp(ts).strftime('%H:%M:%S')}  {text}")
    waiting = [r for r in arb.get("reasons") or () if " waits: " in r]
    for r in waiting:
        click.echo(f"now: {r}")


@cli.command()
@click.option("--since", default=None, help="ISO time (default: 30 days before --until)")
@click.option("--until", default=None, help="ISO time (default: now)")
@click.option("--app", "app_id", default=None, help="only this app's jobs")
@click.option("--by", "group_by", type=click.Choice(["backend", "app", "day"]), default="backend", show_default=True)
@click.pass_context
def costs(ctx: click.Context, since: str | None, until: str | None, app_id: str | None, group_by: str) -> None:
    """What finished jobs cost: GPU-seconds and dollars, local vs cloud, and the cloud share."""
    with _client(ctx) as c:
        data = c.costs(since=since, until=until, app_id=app_id, group_by=group_by)
    click.echo(f"{data['since']} .. {data['until']}" + (f"  app {app_id}" if app_id else ""))
    click.echo(f"{group_by:<24} {'jobs':>7} {'cloud':>7} {'GPU-s':>12} {'USD':>12}")
    for g in data["groups"]:
        click.echo(f"{g['key']:<24} {g['jobs']:>7} {g['cloud_jobs']:>7} {g['gpu_seconds']:>12.1f} {g['usd']:>12.4f}")
    t = data["total"]
    click.echo(f"{'total':<24} {t['jobs']:>7} {t['cloud_jobs']:>7} {t['gpu_seconds']:>12.1f} {t['usd']:>12.4f}")
    click.echo(f"local ${t['local_usd']:.4f}, cloud ${t['cloud_usd']:.4f}; cloud share of jobs {data['cloud_share']:.1%}")
    click.echo(f"prices: {data['prices']}")


_AGE_UNITS = {"w": 7.0, "d": 1.0, "h": 1 / 24, "min": 1 / 1440}
_AGE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)")


def age_days(text: str) -> float:
    """'30d', '12h', '90min', '2w' or a bare number of days -> days (> 0). 'm' is refused: minutes
    or months, a prune should not guess."""
    m = _AGE_RE.fullmatch(text.strip().lower())
    unit = (_AGE_UNITS.get(m.group(2)) if m.group(2) else 1.0) if m else None
    if m and m.group(2) in ("m", "mo", "month", "months"):
        raise click.BadParameter(f"{text!r}: is {m.group(2)!r} minutes or months? Say {m.group(1)}min, or the age "
                                 f"in days (d) or weeks (w)", param_hint="--older-than")
    if m is None or unit is None or not float(m.group(1)) > 0:
        raise click.BadParameter(f"{text!r} is not an age like 30d, 12h, 90min or 2w", param_hint="--older-than")
    return float(m.group(1)) * unit


@cli.command()
@click.option("--older-than", "older_than", default=None, metavar="AGE",
              help="30d, 12h, 90min, 2w (default: the stack's router.retention_days)")
@click.option("--dry-run", is_flag=True, help="count what would go, by app; delete nothing")
@click.option("--yes", "-y", is_flag=True, help="delete without asking (for scripts)")
@click.pass_context
def prune(ctx: click.Context, older_than: str | None, dry_run: bool, yes: bool) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) older than an age, with their artifacts and
    event streams; shows what would go and asks first. Queued and running jobs are never touched.
    The router also does this on its own (router.retention_days)."""
    days = age_days(older_than) if older_than else None
    with _client(ctx) as c:
        r = c.prune(older_than_days=days, dry_run=True)
        if not _pruned(r) or dry_run or r["jobs"] == 0:
            return
        if not yes:
            click.confirm(f"Delete these {r['jobs']} job(s) with their artifacts and event streams?", abort=True)
        _pruned(c.prune(older_than_days=r["older_than_days"], dry_run=False))


def _pruned(r: dict[str, Any]) -> bool:
    if r["busy"]:
        click.echo("another router is pruning right now; nothing done here (try again in a moment)")
        return False
    what = "would delete" if r["dry_run"] else "deleted"
    extra = "" if r["dry_run"] else f", {r['artifacts']} artifact(s), {r['event_streams']} event-stream key(s)"
    click.echo(f"{what} {r['jobs']} job(s) finished more than {r['older_than_days']:g} days ago{extra}")
    for app, n in r["by_app"].items():
        click.echo(f"  {app:<24} {n:>8}")
    return True


@cli.group()
def render() -> None:
    """Generate deployment files from serve_config.yaml."""


@render.command("rayservice")
@click.option("--config", "config_path", default="serve_config.yaml", show_default=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="deploy/kuberay/rayservice.yaml", show_default=True, help="'-' for stdout")
@click.option("--image", default=None, help="the stack's image (default: built from deploy/Dockerfile, this version)")
@click.option("--check", is_flag=True, help="only say whether --out is what rendering gives now (exit 1 if not)")
def render_rayservice(config_path: str, out: str, image: str | None, check: bool) -> None:
    """A KubeRay RayService whose serveConfigV2 is serve_config.yaml, with GPU worker groups and GCS
    fault tolerance; DATABASE_URL and REDIS_URL from the gpu-orchestrator Secret."""
    from ..ops import kuberay

    text = kuberay.render_text(yaml.safe_load(Path(config_path).read_text()), **({"image": image} if image else {}))
    if check:
        if out == "-" or not Path(out).exists() or Path(out).read_text() != text:
            click.echo(f"{out} differs from what {config_path} renders: run `gpu-orch render rayservice`", err=True)
            sys.exit(1)
        click.echo(f"{out} is up to date with {config_path}")
        return
    if out == "-":
        click.echo(text, nl=False)
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    click.echo(f"wrote {out} (from {config_path})")


@cli.command("import-seed")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="write the apps YAML here (default: stdout)")
def import_seed(path: str, out: str | None) -> None:
    """Convert the original system's config/apps.yaml to `apps:` entries for serve_config.yaml.

    Fields with no equivalent are listed on stderr, never silently dropped."""
    from ..ops.seed import convert

    try:
        result = convert(yaml.safe_load(Path(path).read_text()))
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    text = yaml.safe_dump({"apps": result.apps}, sort_keys=False)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {len(result.apps)} apps to {out}", err=True)
    else:
        click.echo(text)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(result.notes)} field(s) not imported (listed above); add a `models` entry for each app's deployment.", err=True)


@cli.command("new-app")
@click.argument("name")
@click.option("--task", required=True, type=click.Choice(["image", "audio", "text", "chat"]),
              help="image: text to image (PNGs); audio: speech to text (an audio file in); text: text generation; "
                   "chat: messages in, a reply out (also /v1/chat/completions)")
@click.option("--runtime-env", "runtime_env", multiple=True, metavar="PKG==VER",
              help="a pip package of the model's runtime_env (repeatable); it replaces the task's default for that package")
@click.option("--root", default=".", show_default=True, type=click.Path(file_okay=False),
              help="the project: the directory with serve_config.yaml")
@click.option("--dry-run", is_flag=True, help="show what would be written (a diff for serve_config.yaml); write nothing")
def new_app(name: str, task: str, runtime_env: tuple[str, ...], root: str, dry_run: bool) -> None:
    """Scaffold model app NAME: deployments/NAME.py (load, infer with progress and cancel, a tiny
    demo model), runtime_envs/NAME.yaml, tests/unit/test_app_NAME.py, and its model and app in
    serve_config.yaml (comments kept; checked in both profiles before anything is written)."""
    from ..ops import scaffold
    from ..ops.scaffold_inputs import Refused, ScaffoldError

    try:
        plan = scaffold.plan(root, name, task, runtime_env)
    except Refused as e:
        raise click.UsageError(str(e)) from None
    except ScaffoldError as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        click.echo(plan.describe())
        return
    for path in scaffold.apply(plan):
        click.echo(f"wrote {path}")
    click.echo(f"\nNext: edit deployments/{name}.py (load: your model; infer: its call), then\n"
               f"  python -m pytest tests/unit/test_app_{name}.py\n"
               f"  gpu-orch up --demo && {plan.example}")
