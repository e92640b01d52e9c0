"""What the router's gauges read, as pure functions: each app's queue (the dispatcher's latest queue
stats) and the arbiter's latest decision (bus.decisions.Snapshot): every model's state and every
GPU's VRAM held against its budget. serve/metrics.py sets Ray gauges from these; no Ray here.

Every router replica sets these gauges, leader or not, from the same inputs (the store's rows and
the one decision the leader published), so each series exists once per router replica with the same
value: dashboards aggregate them with max() (never sum()). Setting them on followers too means a
change of leader leaves no stale series behind.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from gpu_orchestrator.store.base import AppQueueStats

# The arbiter's model states (service.arbiter_views.model_state). gpu_orch_model_state{model, state}
# is 1 for the state a model is in and 0 for the others.
MODEL_STATES = ("cold", "warm", "loading", "resident", "draining", "stopping")


def queue_readings(apps: Iterable[str], stats: Mapping[str, AppQueueStats]) -> dict[str, tuple[int, float]]:
    """Per app: (queued jobs, the oldest queued job's wait in seconds), 0 and 0.0 for an app with
    nothing queued (or no stats yet)."""
    out = {}
    for app_id in apps:
        s = stats.get(app_id)
        queued = s.queued if s is not None else 0
        oldest = (s.oldest_queued_age_s or 0.0) if s is not None and queued else 0.0
        out[app_id] = (queued, max(0.0, float(oldest)))
    return out


def model_state_readings(models: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per model of a snapshot (Snapshot.models): {state: 1 for its state, 0 for every other}. A
    state this version does not know is still reported (1), next to the known ones at 0."""
    out = {}
    for name, m in models.items():
        state = str(m.get("state") or "cold")
        out[name] = {s: int(s == state) for s in (*MODEL_STATES, *(() if state in MODEL_STATES else (state,)))}
    return out


def gpu_vram_readings(gpus: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Per GPU pool of a snapshot (Snapshot.gpus): (VRAM held, VRAM budget) in GB."""
    return {gid: (float(g.get("held_gb") or 0.0), float(g.get("vram_gb") or 0.0)) for gid, g in gpus.items()}
