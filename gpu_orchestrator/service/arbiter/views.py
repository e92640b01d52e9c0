"""Pure assembly for the arbiter: GPU pools from the cluster's nodes, the policy's ModelViews from
the queue, replica states, heartbeats and the leader's tracks, and the Snapshot that shares the
decision. No I/O: the loop gathers the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from gpu_orchestrator.bus.decisions import Snapshot
from gpu_orchestrator.core.config import ArbiterSpec, OrchestratorConfig
from gpu_orchestrator.core.policy_types import Decision, Gpu, ModelView
from gpu_orchestrator.service.arbiter.ports import Node
from gpu_orchestrator.service.arbiter.tracks import ModelTrack
from gpu_orchestrator.service.arbiter.warm import Replicas
from gpu_orchestrator.store.base import AppQueueStats


@dataclass(frozen=True)
class Pools:
    """The GPUs the arbiter places models on: each pool is one physical GPU (a declared pool may
    stand for GPUs of a node type), with where each node's GPUs are among them."""

    gpus: list[Gpu]
    node_pools: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node id -> its pools, by GPU index

    def pool_of(self, node_id: str, gpu_index: int | None) -> str | None:
        """The pool a replica on this node (on its GPU of this index, where known) occupies."""
        pools = self.node_pools.get(node_id, ())
        if len(pools) == 1:
            return pools[0]
        if gpu_index is not None and 0 <= gpu_index < len(pools):
            return pools[gpu_index]
        return None


def _node_types(n: Node) -> list[str]:
    return [k.split(":", 1)[1] for k in n.resources if k.startswith("node_type:")]


def gpu_pools(nodes: Iterable[Node], spec: ArbiterSpec) -> Pools:
    """Declared pools (nodes matched to them by node type, or all to the only pool), else one pool
    per physical GPU: a node with n GPUs is n pools, each 1/n of its VRAM resource (or
    default_gpu_vram_gb each), so no model is placed where no single GPU has room for it."""
    node_pools: dict[str, tuple[str, ...]] = {}
    nodes = list(nodes)
    if spec.gpus:
        gpus = [Gpu(g.id, g.vram_gb, g.node_type, g.virtual) for g in spec.gpus]
        for n in nodes:
            types = _node_types(n)
            match = next((p.id for p in gpus if p.node_type and p.node_type in types), None)
            if match is None and len(gpus) == 1:
                match = gpus[0].id
            if match:
                node_pools[n.node_id] = (match,)
        return Pools(gpus, node_pools)
    gpu_nodes = [n for n in nodes if n.resources.get("GPU", 0) > 0]
    type_count: dict[str, int] = {}
    for n in gpu_nodes:
        for t in _node_types(n)[:1]:
            type_count[t] = type_count.get(t, 0) + 1
    gpus = []
    for n in gpu_nodes:
        types = _node_types(n)
        count = max(1, round(n.resources["GPU"]))
        declared = n.resources.get(spec.vram_resource or "vram_gb")
        each = float(declared) / count if declared is not None else spec.default_gpu_vram_gb
        # Named after the node type where that is unique, else the node.
        pid = types[0] if types and type_count[types[0]] == 1 else (f"{types[0]}@{n.node_id[:8]}" if types else n.node_id[:12])
        ids = (pid,) if count == 1 else tuple(f"{pid}:{i}" for i in range(count))
        gpus += [Gpu(i, each, types[0] if types else "") for i in ids]
        node_pools[n.node_id] = ids
    return Pools(gpus, node_pools)


def packing_warnings(cfg: OrchestratorConfig, pools: Pools) -> list[str]:
    """Models Ray could put on a GPU the arbiter did not count them on. Ray, not the arbiter, picks
    which GPU of a node a replica gets, packing fractional `num_gpus` shares; where a node has
    several GPUs, a model whose share is below its VRAM's share of the GPU could land beside
    another model the arbiter placed on a different GPU of that node."""
    out = []
    shares = sum(m.num_gpus for m in cfg.models.values())
    if cfg.arbiter.warm.enabled and pools.gpus and shares > len(pools.gpus) + 1e-9:
        # Serve counts a parked replica's share as taken: the GPU must have a share for every model
        # that may be parked or resident on it; the arbiter, packing VRAM, judges what really fits.
        out.append(f"arbiter.warm: a parked model keeps its num_gpus share, and the models' shares sum to {shares:g} "
                   f"on {len(pools.gpus)} GPU(s): Serve may not start a model beside parked ones; give each model a "
                   f"placement share (num_gpus <= {len(pools.gpus) / max(1, len(cfg.models)):.2f} here)")
    multi = [g for ids in pools.node_pools.values() if len(ids) > 1 for g in pools.gpus if g.id in ids]
    if not multi or cfg.arbiter.vram_resource:
        return out
    smallest = min(g.vram_gb for g in multi)
    for name, m in cfg.models.items():
        need = m.vram_gb / smallest
        if m.vram_gb > 0 and m.num_gpus < need - 1e-9:
            out.append(f"models.{name}.num_gpus {m.num_gpus:g} is below its VRAM's share of a {smallest:g} GB GPU "
                       f"({m.vram_gb:g}/{smallest:g} = {need:.2f}): on a node with several GPUs Ray may pack it "
                       f"onto a GPU beside another model; set num_gpus >= {need:.2f}")
    return out


def placement(holding: int, locations: Iterable[tuple[str, int | None]], pools: Pools,
              previous: tuple[str, ...]) -> tuple[str, ...]:
    """The GPU pools a model's `holding` replicas occupy: from its replicas' heartbeats (node and
    GPU index), filled in from where the arbiter last placed it."""
    if holding == 0:
        return ()
    if len(pools.gpus) == 1:
        return (pools.gpus[0].id,) * holding
    known = [p for p in (pools.pool_of(n, g) for n, g in locations) if p]
    if len(known) >= holding:
        return tuple(known[:holding])
    return tuple(known) + tuple(previous[len(known):holding]) or previous


def parked_context(pools: Pools, reps: Mapping[str, Replicas], gb: float) -> list[Gpu]:
    """The GPUs less what parked replicas still hold there (their CUDA context): a parked process
    keeps it until it stops."""
    on: dict[str, int] = {}
    for r in reps.values():
        pool = pools.pool_of(r.node or "", r.gpu_index) if r.off_gpu else None
        if pool is not None:
            on[pool] = on.get(pool, 0) + r.off_gpu
    return [replace(g, vram_gb=max(0.0, g.vram_gb - gb * on[g.id])) if on.get(g.id) else g for g in pools.gpus]


def replica_counts(states: Mapping[str, int]) -> tuple[int, int, int]:
    """(running, starting, stopping) from Serve's replica states of one deployment."""
    return (states.get("RUNNING", 0), states.get("STARTING", 0) + states.get("UPDATING", 0),
            states.get("STOPPING", 0))


def on_gpu(states: Mapping[str, int], reps: Replicas | None) -> tuple[int, int, int]:
    """(running, starting, stopping) as the policy counts them: replica_counts less the warm
    tier's replicas that hold no VRAM (parked, or dropped after a failed park), with a park under
    way counted as stopping and a wake as starting."""
    running, starting, stopping = replica_counts(states)
    if reps is None:
        return running, starting, stopping
    return (max(0, running - reps.off_gpu), starting + reps.waking, stopping + reps.parking)


def packing_vram(declared: float, measured: float | None, margin: float | None) -> float:
    """The VRAM the arbiter packs a model by: its measured peak with the margin once known (margin
    None: the declared figure always), else the declared one."""
    if measured is None or margin is None:
        return declared
    return round(measured * (1 + margin), 3)


def model_views(cfg: OrchestratorConfig, *, stats: Mapping[str, AppQueueStats], service: Mapping[str, float],
                states: Mapping[str, Mapping[str, int]], beats: Iterable[dict[str, Any]],
                tracks: Mapping[str, ModelTrack], pools: Pools, now: float,
                reps: Mapping[str, Replicas] | None = None, keepable: frozenset[str] | set[str] = frozenset()
                ) -> list[ModelView]:
    """What the policy sees of every model deployment now. `tracks` must already have observed
    this tick's replica states (resident_since). `reps` (the warm tier on): each model's replicas by
    heartbeat; `keepable`: the resident models whose node would keep them warm."""
    by_model: dict[str, list[str]] = {}  # deployment -> its app ids (one pass, not one per model)
    for a in cfg.apps:
        by_model.setdefault(a.deployment, []).append(a.id)
    beats_of: dict[str, list[dict[str, Any]]] = {}
    for b in beats:
        beats_of.setdefault(b.get("deployment"), []).append(b)
    views = []
    for name, spec in cfg.models.items():
        apps = [a for a in by_model.get(name, ()) if a in stats]
        tr = tracks[name]
        r = reps.get(name) if reps is not None else None
        running, starting, stopping = on_gpu(states.get(name, {}), r)
        if r is not None and (r.warm or r.cold) and tr.last_target:
            starting += r.warm + r.cold  # up but off the GPU, and this leader loads it: its first job wakes it
        if tr.last_target == 0 and running + starting > 0:
            # Replicas this leader did not ask for (Serve's cold-start fast path restarts a model
            # evicted a moment after its last request): memory held, not adopted, so the model it
            # was evicted for still waits for it to go and the two are never loading together.
            running, starting, stopping = 0, 0, stopping + running + starting
        mine = beats_of.get(name, [])
        queued = sum(stats[a].queued for a in apps)
        in_flight = sum(stats[a].running for a in apps)
        oldest = max((stats[a].oldest_queued_age_s or 0.0 for a in apps), default=0.0)
        prio = max((stats[a].max_queued_priority or 0 for a in apps if stats[a].queued), default=0)
        last_used = max((b.get("last_used") or 0.0 for b in mine), default=0.0) or None
        idle_from = max(filter(None, [last_used, tr.resident_since]), default=None)
        services = [service[a] for a in by_model.get(name, ()) if a in service]
        views.append(ModelView(
            name=name,
            vram_gb=packing_vram(cfg.model_vram_gb(name), tr.measured_vram_gb,
                                 cfg.arbiter.vram_margin if cfg.arbiter.vram_from_peak else None),
            load_s=tr.measured_load_s if tr.measured_load_s is not None else spec.load_s,
            service_s=sum(services) / len(services) if services else 1.0,
            replicas=running,
            pending=starting,
            stopping=stopping,
            placement=placement(running + starting + stopping,
                                [(b.get("node_id") or "", b.get("gpu_index")) for b in mine], pools,
                                tr.placement),
            in_flight=in_flight,
            queued=queued,
            oldest_wait_s=oldest,
            max_priority=prio,
            idle_s=(now - idle_from) if idle_from is not None and in_flight == 0 else None,
            resident_s=(now - tr.resident_since) if tr.resident_since else 0.0,
            cold_s=(now - tr.cold_since) if tr.cold_since is not None and running == 0 else None,
            # A replica up but off the GPU wakes where it sits: the policy places it on that GPU.
            pin=(pools.pool_of(r.node or "", r.gpu_index) or spec.pin) if r is not None and r.off_gpu and not r.resident
            else spec.pin,
            max_replicas=spec.max_replicas,
            idle_ttl_s=spec.idle_ttl_s,
            warm_load_s=tr.measured_warm_s,
            warm=r is not None and (r.warm > 0 or (name in keepable and running + starting > 0)),
        ))
    return views


def model_state(v: ModelView, d: Decision, parked: bool = False) -> str:
    if parked and v.holds == 0 and d.targets.get(v.name, 0) == 0:
        return "warm"  # its replica is parked: weights in host memory, no VRAM
    if v.name in d.draining:
        return "draining"
    if v.replicas > 0 and d.targets.get(v.name, 0) == 0:
        return "stopping"
    if v.replicas > 0:
        return "resident"
    if v.pending > 0 or d.targets.get(v.name, 0) > 0:
        return "loading"
    if v.stopping > 0:  # its replica still holds the memory it is giving back
        return "stopping"
    return "cold"


def gpu_vram(views: Iterable[ModelView], gpus: Iterable[Gpu]) -> dict[str, dict[str, Any]]:
    """Per GPU pool: its VRAM budget and the VRAM held on it, as the policy counts it: the declared
    VRAM of every replica placed there (resident, loading or stopping), and `virtual` for a virtual
    GPU (the demo's). The gpu_orch_gpu_vram_* gauges."""
    out: dict[str, dict[str, Any]] = {
        g.id: {"vram_gb": float(g.vram_gb), "held_gb": 0.0, **({"virtual": True} if g.virtual else {})} for g in gpus}
    for v in views:
        for gid in v.placement:
            if gid in out:
                out[gid]["held_gb"] += v.vram_gb
    return out


def _vram(v: ModelView, tr: ModelTrack, declared: Mapping[str, float]) -> dict[str, Any]:
    """What the arbiter packs the model by (`vram_packed_gb`: the measured peak with the margin once
    known, else the declared figure), and a flag where the declared figure is below the peak."""
    d, m = declared.get(v.name, v.vram_gb), tr.measured_vram_gb
    return {"vram_declared_gb": d, "vram_measured_gb": None if m is None else round(m, 3), "vram_packed_gb": v.vram_gb,
            "vram_source": "measured" if m is not None and v.vram_gb != d else "declared",
            **({"vram_declared_below_measured": True} if m is not None and d < m else {})}


def decision_snapshot(views: list[ModelView], d: Decision, tracks: Mapping[str, ModelTrack], *, leader: str,
                      now: float, swap_credit_s: Mapping[str, float] | None = None,
                      history: Iterable[tuple[float, str]] = (), gpus: Iterable[Gpu] = (),
                      reps: Mapping[str, Replicas] | None = None, kept: Iterable[str] = (),
                      hosts: Mapping[str, dict[str, Any]] | None = None,
                      declared: Mapping[str, float] | None = None) -> Snapshot:
    """The decision as published. The warm tier's parts: `reps` (each model's replicas),
    `kept` (the models kept parked: Serve keeps their replica) and `hosts` (per node memory)."""
    reps = reps or {}
    # A parked model the policy loads takes work at once: its replica is up; the first job wakes it.
    wakeable = {n for n, r in reps.items() if r.asleep}
    models = {
        v.name: {
            "state": model_state(v, d, v.name in wakeable),
            "target": d.targets.get(v.name, 0),
            "replicas": v.replicas,
            "pending": v.pending,
            "stopping": v.stopping,
            "placement": list(d.placements.get(v.name, v.placement)),
            **_vram(v, tracks[v.name], declared or {}),
            "queued": v.queued,
            "in_flight": v.in_flight,
            "idle_s": v.idle_s,
            "load_s": v.load_s,
            "loads": tracks[v.name].loads,
            "evictions": tracks[v.name].evictions,
            "last_decision": tracks[v.name].last_action,
            "last_decision_at": tracks[v.name].last_action_at,
            "load_measured_s": tracks[v.name].measured_load_s,
            "warm_load_measured_s": tracks[v.name].measured_warm_s,
            "loading_since": tracks[v.name].load_started,
            **({"host_held_gb": round(reps[v.name].host_gb, 3)} if v.name in reps and reps[v.name].warm else {}),
        }
        for v in views
    }
    return Snapshot(
        ts=now, leader=leader, targets=d.targets,
        dispatchable=[v.name for v in views if d.dispatchable(v) or (
            v.name in wakeable and d.targets.get(v.name, 0) > 0 and v.name not in d.draining)],
        draining=sorted(d.draining), reasons=list(d.reasons), models=models, unplaceable=dict(d.unplaceable),
        swap_credit_s={g: round(c, 1) for g, c in (swap_credit_s or {}).items()},
        history=[[ts, text] for ts, text in history],
        gpus=gpu_vram(views, gpus),
        parked=sorted(kept),
        hosts=dict(hosts or {}),
    )


def model_wait(s: Snapshot | None, model: str, now: float) -> dict[str, Any] | None:
    """What a queued job of `model` waits for, from the decision every replica acts on: None when
    the model takes work now; else {"model", "state", "about_s", "message"}. `about_s` is the load
    time left (learned from the model's last load, else its declared load_s), or unknown (None)."""
    if s is None:
        return {"model": model, "state": "unknown", "about_s": None,
                "message": f"waiting for {model}: the GPU arbiter has not decided yet"}
    if model in s.dispatchable:
        return None
    m = s.models.get(model) or {}
    state, load_s = m.get("state") or "cold", m.get("load_s")
    never = s.unplaceable.get(model) or next((r for r in s.reasons if r.startswith(f"cannot place {model}:")), None)
    if never:  # no GPU here can hold it: its jobs fail (or go to the fallback) once max_wait_s has passed
        return {"model": model, "state": "cannot_place", "about_s": None, "message": never}
    if state == "loading" and load_s is not None:
        since = m.get("loading_since")
        left = max(1.0, load_s - (now - since)) if since is not None else load_s
        return {"model": model, "state": state, "about_s": round(left),
                "message": f"waiting for {model} to load (about {left:.0f} s)"}
    about = round(load_s) if load_s is not None else None
    tail = f"about {load_s:.0f} s" if load_s is not None else "its load time unknown"
    # A model giving its memory back for this one: say so, not the policy's "waits" (it has acted).
    leaving = [f"{name} ({o.get('vram_packed_gb', o.get('vram_declared_gb', 0)):g} GB)" for name, o in s.models.items()
               if name != model and o.get("state") in ("stopping", "draining")
               and f" for {model}:" in (o.get("last_decision") or "")]
    if leaving:
        return {"model": model, "state": "making_room", "about_s": about,
                "message": f"waiting for {', '.join(leaving)} to unload, then {model} loads ({tail})"}
    why = next((r for r in s.reasons if r.startswith(f"{model} waits")), None)
    return {"model": model, "state": state, "about_s": about,
            "message": f"waiting for {model} to be loaded ({tail} once it has room)" + (f": {why}" if why else "")}


def quiet(s: Snapshot | None) -> bool:
    """Nothing for the arbiter to watch: no model with work queued or running, none loading,
    stopping or draining (every model resident and idle, warm, or cold)."""
    return s is not None and not s.draining and all(
        not (m.get("queued") or m.get("in_flight") or m.get("pending") or m.get("stopping"))
        and m.get("state") in ("resident", "cold", "warm") for m in s.models.values())
