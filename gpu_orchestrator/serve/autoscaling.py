"""The application-level autoscaling policy that enforces the GPU arbiter's decisions: both ends of
the channel, and its keys, in one place.

serve_config.yaml:  applications[].autoscaling_policy.policy_function: serve_apps.autoscaling:arbiter_policy

The arbiter runs in the router (the leader replica: it has the queue and the replica states). Each
router replica's `record_autoscaling_stats` returns `encode(arbiter.snapshot, arbiter.is_leader)`;
`arbiter_policy` runs in the Serve controller, picks the freshest leader's report from those
metrics (`pick_targets`) and returns its targets for every model deployment, so Serve's own
autoscaler starts and stops the replicas and the Ray dashboard shows the truth.

Imports nothing heavy: the Serve controller loads this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_orchestrator.bus.decisions import Snapshot

ROUTER = "router"
LEADER_KEY = "arbiter_leader"  # 1.0 from the leader, 0.0 from the others
TS_KEY = "arbiter_ts"  # when the leader decided: the freshest leader wins during a handover
TARGET_PREFIX = "target:"  # target:<deployment> -> replicas


def encode(snapshot: Snapshot | None, is_leader: bool) -> dict[str, float]:
    """What a router replica reports to the controller (record_autoscaling_stats)."""
    if not is_leader or snapshot is None:
        return {LEADER_KEY: 0.0}
    out = {LEADER_KEY: 1.0, TS_KEY: snapshot.ts}
    out.update({f"{TARGET_PREFIX}{k}": float(v) for k, v in snapshot.targets.items()})
    for k in snapshot.parked:  # the warm tier: a parked model's replica stays up (holding no VRAM)
        out[f"{TARGET_PREFIX}{k}"] = max(out.get(f"{TARGET_PREFIX}{k}", 0.0), 1.0)
    return out


def _latest(series: Any) -> tuple[float, float] | None:
    if not series:
        return None
    p = max(series, key=lambda x: x.timestamp)
    return p.timestamp, p.value


def pick_targets(raw: dict[str, dict[Any, Any]]) -> dict[str, int] | None:
    """From the router replicas' raw metrics, the targets of the freshest leader report."""
    best = None
    for replica, series in (raw.get(LEADER_KEY) or {}).items():
        latest = _latest(series)
        if latest is None or latest[1] < 1:
            continue
        ts = _latest((raw.get(TS_KEY) or {}).get(replica))
        key = ts[1] if ts else latest[0]
        if best is None or key > best[0]:
            best = (key, replica)
    if best is None:
        return None
    replica = best[1]
    out = {}
    for name, per_replica in raw.items():
        if name.startswith(TARGET_PREFIX):
            latest = _latest(per_replica.get(replica))
            if latest is not None:
                out[name[len(TARGET_PREFIX):]] = int(round(latest[1]))
    return out


def arbiter_policy(contexts: dict[Any, Any]) -> tuple[dict[Any, int], dict]:
    router = next((c for c in contexts.values() if c.deployment_name == ROUTER), None)
    targets = pick_targets(router.raw_metrics or {}) if router is not None else None
    decisions = {}
    for dep_id, ctx in contexts.items():
        if ctx.deployment_name == ROUTER or targets is None or ctx.deployment_name not in targets:
            decisions[dep_id] = ctx.target_num_replicas  # no fresh report: change nothing
        else:
            decisions[dep_id] = targets[ctx.deployment_name]
    return decisions, {}
