"""The admin page: each app's queue, each model's state and VRAM per GPU, the arbiter's recent
decisions, recent jobs (filtered, cancellable), jobs per minute by status and the last day's cost,
local vs cloud. Refreshes itself."""

from __future__ import annotations

import datetime as dt
from typing import Any

import gradio as gr
import pandas as pd

from gradio_uis.common import CONCURRENCY, DELETE_CACHE, api_url, client, error_html, explain, standalone

REFRESH_S = 2.0
ALL = "(all)"
STATUSES = [ALL, "queued", "running", "succeeded", "failed", "cancelled"]
QUEUE_COLS = ["app", "queued", "running", "oldest wait (s)", "cloud (queued/running)"]
MODEL_COLS = ["model", "state", "gpu", "vram held (GB)", "vram declared (GB)", "host held (GB)", "replicas", "target", "queued",
              "running", "loads", "evictions", "last decision"]
GPU_COLS = ["gpu", "size (GB)", "models", "vram held (GB)", "vram declared (GB)", "swap credit (s)"]
VIRTUAL = " (virtual)"  # the demo's GPU: accounting only, its models run on CPU
DECISION_COLS = ["time", "decision"]
JOB_COLS = ["created", "job id", "app", "status", "attempts", "ran on", "error"]


def _clock(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else ""


def queue_rows(stats: dict[str, Any], app_ids: list[str]) -> list[list[Any]]:
    """Every configured app, idle ones included (0 queued), so the table does not jump around."""
    apps = stats.get("apps", {})
    rows = []
    for app_id in sorted(set(app_ids) | set(apps)):
        a = apps.get(app_id, {})
        age, cloud = a.get("oldest_queued_age_s"), a.get("cloud")
        rows.append([app_id, a.get("queued", 0), a.get("running", 0), round(age, 1) if age is not None else "",
                     f"{cloud['queued']}/{cloud['running']}" if cloud else ""])
    return rows


def model_rows(fleet: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for m in fleet.get("models", []):
        arb = m.get("arbiter") or {}
        running = (m.get("replica_states") or {}).get("RUNNING", 0)
        rows.append([m["deployment"], m["state"], ", ".join(arb.get("placement") or []) or "",
                     m.get("vram_held_gb") if m.get("vram_held_gb") is not None else "",
                     m.get("vram_declared_gb") or 0,
                     # A parked model's weights in host memory (the warm tier); blank for the others.
                     round(m["host_held_gb"], 1) if m.get("host_held_gb") else "", running, m.get("target_replicas"),
                     m.get("queued", 0),
                     m.get("running", 0), arb.get("loads", ""), arb.get("evictions", ""), arb.get("last_decision") or ""])
    return rows


def gpu_rows(fleet: dict[str, Any]) -> list[list[Any]]:
    """Per GPU: the models placed on it (resident or loading), the VRAM their replicas report
    holding (blank until one reports) and the VRAM they declare."""
    placed: dict[str, list[tuple[str, float | None, float]]] = {}
    for m in fleet.get("models", []):
        arb = m.get("arbiter") or {}
        if m["state"] in ("resident", "loading", "draining"):
            for g in arb.get("placement") or []:
                placed.setdefault(g, []).append((m["deployment"], m.get("vram_held_gb"), m.get("vram_declared_gb") or 0))
    arb = fleet.get("arbiter") or {}
    credit, sizes = arb.get("swap_credit_s") or {}, arb.get("gpus") or {}
    rows = []
    for g in sorted(set(placed) | set(credit) | set(sizes)):
        ms = placed.get(g, [])
        held = [h for _, h, _ in ms if h is not None]
        size = sizes.get(g) or {}
        rows.append([g + (VIRTUAL if size.get("virtual") else ""), size.get("vram_gb", ""), ", ".join(n for n, _, _ in ms),
                     round(sum(held), 1) if held else "", round(sum(d for _, _, d in ms), 1), credit.get(g, "")])
    return rows


def decision_rows(fleet: dict[str, Any]) -> tuple[list[list[Any]], str]:
    """The arbiter's recent actions (newest first) and what is waiting now, with reasons."""
    arb = fleet.get("arbiter") or {}
    rows = [[_clock(ts), text] for ts, text in reversed(arb.get("history") or [])]
    waits = [r for r in arb.get("reasons") or [] if r not in {t for _, t in arb.get("history") or []}]
    now = "\n".join(f"- {r}" for r in waits) or "nothing waiting"
    leader = f"leader `{arb['leader']}`, decided {_clock(arb.get('decided_at'))}" if arb else "the arbiter is off"
    if any(g.get("virtual") for g in (arb.get("gpus") or {}).values()):
        leader += " · its GPU is **virtual** (the demo's: VRAM accounting only, the models run on CPU)"
    return rows, f"**Arbiter:** {leader}\n\n{now}"


def _status(j: dict[str, Any]) -> str:
    """A queued job waiting for its model says which (and whether it is loading)."""
    w = j.get("waiting_for")
    return f"{j['status']}: waiting for {w['model']} ({w['state']})" if w else j["status"]


def job_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    return [[(j.get("created_at") or "")[:19].replace("T", " "), j["job_id"], j["app_id"], _status(j),
             f"{j.get('attempts', 0)}/{j.get('max_attempts', '')}", j.get("backend") or "", (j.get("error") or "")[:200]]
            for j in jobs]


def minute_frame(stats: dict[str, Any]) -> pd.DataFrame:
    rows = [{"minute": dt.datetime.fromisoformat(b["minute"]).astimezone().strftime("%H:%M"), "status": b["status"],
             "jobs": b["count"]} for b in stats.get("jobs_per_minute", [])]
    return pd.DataFrame(rows, columns=["minute", "status", "jobs"])


def cost_frame(costs: dict[str, Any]) -> pd.DataFrame:
    """The last day's spend by backend (local, replicate, modal), for the cost chart."""
    rows = [{"backend": g["key"], "usd": g["usd"], "jobs": g["jobs"]} for g in costs.get("groups", [])]
    return pd.DataFrame(rows, columns=["backend", "usd", "jobs"])


def cost_line(costs: dict[str, Any]) -> str:
    """The last day's spend, local vs cloud (GET /v1/costs)."""
    t = costs.get("total") or {}
    n, cloud = t.get("jobs", 0), t.get("cloud_jobs", 0)
    return (f"**Last 24 h:** local ${t.get('local_usd', 0.0):.4f} ({n - cloud} jobs), cloud ${t.get('cloud_usd', 0.0):.4f} "
            f"({cloud} jobs), cloud share {costs.get('cloud_share', 0.0):.0%}; {t.get('gpu_seconds', 0.0):.0f} GPU-s")


def build(api: str | None = None) -> gr.Blocks:
    url = api_url(api)

    async def refresh(app_filter: str, status_filter: str, request: gr.Request):
        async with client(url, request) as c:
            try:
                apps = await c.apps()
                fleet = await c.fleet()
                stats = await c.stats(minutes=60)
                since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).isoformat()
                costs = await c.costs(since=since)
                jobs = (await c.list(app_id=None if app_filter in (None, ALL) else app_filter,
                                     status=None if status_filter in (None, ALL) else status_filter, limit=50))["jobs"]
            except Exception as e:
                return (error_html(explain(e)),) + (gr.skip(),) * 10
        decisions, waiting = decision_rows(fleet)
        app_ids = [a["id"] for a in apps]
        return ("", queue_rows(stats, app_ids), model_rows(fleet), gpu_rows(fleet), decisions, waiting,
                job_rows(jobs), minute_frame(stats), gr.update(choices=[ALL] + app_ids), cost_line(costs),
                cost_frame(costs))

    async def cancel(job_id: str, request: gr.Request):
        job_id = (job_id or "").strip()
        if not job_id:
            return error_html("job id: pick a job in the table or paste its id")
        try:
            async with client(url, request) as c:
                job = await c.cancel(job_id)
        except Exception as e:
            return error_html(explain(e))
        return f"<div>job {job['job_id']} is {job['status']}</div>"

    def pick(evt: gr.SelectData) -> str:
        # The clicked row as the page showed it (Gradio 6 sends it with a Dataframe's select), not
        # its index: a refresh (every REFRESH_S) may reorder the table before this runs.
        return str(evt.row_value[JOB_COLS.index("job id")]) if evt.row_value else ""

    with gr.Blocks(delete_cache=DELETE_CACHE, title="GPU Orchestrator: admin") as demo:
        gr.Markdown("## GPU Orchestrator")
        error = gr.HTML(elem_id="error")
        with gr.Row():
            queues = gr.Dataframe(headers=QUEUE_COLS, label="Queues", elem_id="queues", interactive=False)
            gpus = gr.Dataframe(headers=GPU_COLS, label="GPUs", elem_id="gpus", interactive=False)
        spend = gr.Markdown(elem_id="costs")
        models = gr.Dataframe(headers=MODEL_COLS, label="Models", elem_id="models", interactive=False, wrap=True)
        with gr.Row():
            with gr.Column():
                waiting = gr.Markdown(elem_id="waiting")
                decisions = gr.Dataframe(headers=DECISION_COLS, label="Recent decisions", elem_id="decisions",
                                         interactive=False, wrap=True, max_height=300)
            chart = gr.BarPlot(x="minute", y="jobs", color="status", label="Jobs per minute (last hour, by status)",
                               elem_id="jobs-chart", height=300)
            cost_chart = gr.BarPlot(x="backend", y="usd", color="backend", label="Cost, last 24 h (USD, local vs cloud)",
                                    elem_id="cost-chart", height=300)
        with gr.Row():
            app_filter = gr.Dropdown([ALL], value=ALL, label="App", elem_id="filter-app")
            status_filter = gr.Dropdown(STATUSES, value=ALL, label="Status", elem_id="filter-status")
            job_id = gr.Textbox(label="Job id", elem_id="cancel-id")
            cancel_btn = gr.Button("Cancel job", variant="stop", elem_id="cancel")
        cancel_out = gr.HTML(elem_id="cancel-result")
        jobs = gr.Dataframe(headers=JOB_COLS, label="Recent jobs (select one to cancel it)", elem_id="jobs",
                            interactive=False, wrap=True)
        outputs = [error, queues, models, gpus, decisions, waiting, jobs, chart, app_filter, spend, cost_chart]
        timer = gr.Timer(REFRESH_S)
        timer.tick(refresh, [app_filter, status_filter], outputs, show_progress="hidden")
        demo.load(refresh, [app_filter, status_filter], outputs)
        for f in (app_filter, status_filter):
            f.change(refresh, [app_filter, status_filter], outputs)
        jobs.select(pick, None, job_id)
        cancel_btn.click(cancel, job_id, cancel_out)
    return demo.queue(default_concurrency_limit=CONCURRENCY)


def main() -> None:
    standalone(build, "admin")


if __name__ == "__main__":
    main()
