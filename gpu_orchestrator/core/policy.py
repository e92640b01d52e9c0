"""The GPU arbiter's policy. Pure: no Ray, no I/O, no clock; milliseconds to test, and the same
function drives the trace simulator (gpu_orchestrator/core/simulator.py) and the live router.
`decide()` returns typed actions (what to do, to which model, where); their text is for people.
Its inputs and outputs (Gpu, ModelView, PolicyConfig; Verb, Action, Decision) are in core/policy_types.py.

Ray's fractional `num_gpus` is a logical share with no memory isolation, so residency is decided
here from declared/measured VRAM against each GPU's budget:

- never exceed a GPU's VRAM budget (a model still holding memory counts until it is gone);
- never take a replica with running work away (a model to be evicted is *drained*: no new work,
  evicted when its in-flight jobs end);
- scale a model to zero after its idle TTL;
- a cold model with work loads where it fits; if nothing fits it takes room from idle models first,
  then (only when its oldest job has waited `max_wait_s`, or it carries a higher priority) from the
  busy model whose queue empties soonest;
- otherwise a resident model keeps serving its queue in a batch (no A-B-A thrash), bounded by
  `max_wait_s` for everyone else (no starvation);
- under overload (swapping often enough to keep that bound would eat the GPU), swapping out a model
  that still has queued work spends a swap budget (core.swap_budget): loads take at most
  `swap_budget` of GPU time, so batches grow as long as the budget requires instead of thrashing;
  a higher-priority job still goes first, within `max_wait_s`, and its loads are paid from the same
  budget (normal-priority swaps wait longer to make up for them);
- a load is weighed at what it costs (core.warm.load_cost): from host memory for a warm model,
  from disk otherwise;
- higher priority first; a model pinned to a GPU or node type only goes there;
- no starvation: a model whose work has waited for the GPU `starvation_s` (10 x max_wait_s) goes
  before every other, whatever the priorities and the budget; a model just loaded starts its first
  job before anyone displaces it;
- a GPU is a pool: room is counted per physical GPU, and of the victims picked for a newcomer only
  those it needs are evicted.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable, Mapping

from gpu_orchestrator.core.policy_types import Action, Decision, Gpu, ModelView, PolicyConfig, Verb
from gpu_orchestrator.core.warm import load_cost

DRAIN_MARGIN = 1.5


def _allows(m: ModelView, g: Gpu) -> bool:
    """Whether `m`'s pin (a GPU id or node type, or none) lets it on `g`."""
    return m.pin is None or m.pin in (g.id, g.node_type)


def _allowed(m: ModelView, gpus: Iterable[Gpu]) -> list[Gpu]:
    return [g for g in gpus if _allows(m, g)]


def waited_for_gpu(m: ModelView) -> float:
    """How long the model's work has waited for the GPU: its oldest job's wait, but no longer than
    it has been cold (a model just swapped out, its jobs old, has not been waiting for the GPU)."""
    return m.oldest_wait_s if m.cold_s is None else min(m.oldest_wait_s, m.cold_s)


def starving(m: ModelView, cfg: PolicyConfig) -> bool:
    """A model with no replica whose work has waited for the GPU past the starvation bound."""
    return m.queued > 0 and m.holds == 0 and waited_for_gpu(m) >= cfg.starvation_bound_s


def _urgency(m: ModelView, cfg: PolicyConfig) -> tuple:
    """Who gets the GPU first: a starving model, then higher priority, then the longest wait *for
    the GPU*: a model just swapped out does not take back the room it made for another."""
    return (not starving(m, cfg), -m.max_priority, -waited_for_gpu(m), m.name)


def decide(models: Iterable[ModelView], gpus: Iterable[Gpu], cfg: PolicyConfig = PolicyConfig(),
           credit: Mapping[str, float] | None = None) -> Decision:
    """`credit`: per GPU id, the load seconds the swap budget still allows (core.swap_budget);
    None = no budget (every due swap is affordable)."""
    models = sorted(models, key=lambda m: m.name)
    gpus = list(gpus)
    by_name = {m.name: m for m in models}
    actions: list[Action] = []
    targets = {m.name: m.replicas + m.pending for m in models}
    placements: dict[str, list[str]] = {m.name: list(m.placement) for m in models}
    draining: set[str] = set()
    unplaceable: dict[str, str] = {}
    # Spent as swaps are planned: two swaps in one decision cannot both spend the same credit.
    credit = dict(credit) if credit is not None else None

    # Memory actually held per GPU: every replica that exists (resident, loading, stopping).
    used = {g.id: 0.0 for g in gpus}
    for m in models:
        for gid in m.placement:
            if gid in used:
                used[gid] += m.vram_gb

    cap = {g.id: g.vram_gb for g in gpus}
    # Who sits on each GPU (filtered by the current targets where used): an eviction plan looks at
    # one GPU's residents, not every model (decide stays about linear in GPUs and models).
    on_gpu: dict[str, list[ModelView]] = {g.id: [] for g in gpus}
    for m in models:
        for gid in set(m.placement):
            if gid in on_gpu:
                on_gpu[gid].append(m)

    def free(gid: str) -> float:
        return cap[gid] - used[gid]

    fits_of: dict[tuple, tuple[list[Gpu], list[Gpu]]] = {}
    # GPUs by free memory, for best fit in O(log n) rather than a scan of every GPU per model.
    by_free = sorted((free(g.id), g.id) for g in gpus)
    gpu_of = {g.id: g for g in gpus}

    def take(gid: str, gb: float) -> None:
        del by_free[bisect.bisect_left(by_free, (free(gid), gid))]
        used[gid] += gb
        bisect.insort(by_free, (free(gid), gid))

    def best_fit(m: ModelView) -> Gpu | None:
        """The allowed GPU with the least free memory that holds `m` (keeps big holes for big models)."""
        for _, gid in by_free[bisect.bisect_left(by_free, (m.vram_gb, "")):]:
            if _allows(m, gpu_of[gid]):
                return gpu_of[gid]
        return None

    # 1. Idle TTL: release VRAM of models with nothing to do.
    for m in models:
        ttl = m.idle_ttl_s if m.idle_ttl_s is not None else cfg.idle_ttl_s
        if targets[m.name] > 0 and m.in_flight == 0 and m.queued == 0 and m.idle_s is not None and m.idle_s >= ttl:
            targets[m.name] = 0
            actions.append(Action(Verb.scale_to_zero, m.name,
                                  text=f"scale {m.name} to zero: idle {m.idle_s:.0f} s >= ttl {ttl:.0f} s"))

    # 2. Cold models with work, most urgent first, get room.
    wanting = sorted((m for m in models if m.queued > 0 and targets[m.name] == 0 and m.stopping == 0),
                     key=lambda m: _urgency(m, cfg))
    for w in wanting:
        if w.vram_gb == 0:  # needs no GPU memory (a CPU model): load on demand, nothing to evict
            targets[w.name] = 1
            actions.append(Action(Verb.load, w.name, text=f"load {w.name}: {w.queued} queued, needs no GPU memory"))
            continue
        key = (w.pin, w.vram_gb)
        if key not in fits_of:  # models alike in pin and size share the scan
            allowed = _allowed(w, gpus)
            fits_of[key] = (allowed, [g for g in allowed if w.vram_gb <= g.vram_gb])
        allowed, fits = fits_of[key]
        if not fits:
            why = (f"cannot place {w.name}: needs {w.vram_gb:g} GB, largest allowed GPU has {max(g.vram_gb for g in allowed):g} GB"
                   if allowed else f"cannot place {w.name}: no GPU " + (f"matches pin {w.pin!r}" if w.pin else "in the cluster"))
            actions.append(Action(Verb.cannot_place, w.name, text=why))
            if w.oldest_wait_s >= cfg.max_wait_s:
                unplaceable[w.name] = why
            continue
        g = best_fit(w)
        if g is not None:
            targets[w.name] = 1
            placements[w.name] = [g.id]
            take(g.id, w.vram_gb)
            actions.append(Action(Verb.load, w.name, (g.id,),
                                  text=f"load {w.name} on {g.id}: {w.queued} queued, {free(g.id) + w.vram_gb:.0f} GB free"))
            continue
        plan = _eviction_plan(w, fits, on_gpu, by_name, targets, draining, free, cfg, credit)
        if plan is None:
            unpaid = credit is not None and _eviction_plan(w, fits, on_gpu, by_name, targets, draining, free, cfg, None)
            if unpaid:
                gid = unpaid[0]
                actions.append(Action(Verb.wait, w.name, text=(
                    f"{w.name} waits: {w.queued} queued (oldest {w.oldest_wait_s:.0f} s), overloaded: swap budget "
                    f"on {gid} has {max(0.0, credit.get(gid, 0.0)):.1f} s of the {unpaid[2]:.1f} s this swap costs "
                    f"(loads held to {cfg.swap_budget:.0%} of GPU time)")))
            else:
                actions.append(Action(Verb.wait, w.name, text=(
                    f"{w.name} waits: {w.queued} queued (oldest {w.oldest_wait_s:.0f} s), "
                    f"no idle model to evict, not yet due (max_wait {cfg.max_wait_s:.0f} s)")))
            continue
        gid, victims, cost = plan
        hungry = starving(w, cfg)
        if credit is not None and victims:
            credit[gid] = credit.get(gid, 0.0) - cost
        for v in victims:
            vm = by_name[v]
            why = (f"idle {vm.idle_s:.0f} s" if vm.idle_s is not None else "idle") if vm.queued == 0 and vm.in_flight == 0 else (
                f"{vm.queued} queued, {vm.in_flight} running")
            cause = ("higher priority" if w.max_priority > vm.max_priority and not hungry else
                     f"oldest waited {w.oldest_wait_s:.0f} s" + (" (starving)" if hungry else ""))
            if vm.in_flight > 0:
                draining.add(v)
                actions.append(Action(Verb.drain, v, (gid,), for_model=w.name,
                                      text=f"drain {v} ({why}) for {w.name}: {w.queued} queued, {cause}"))
            else:
                targets[v] = 0
                actions.append(Action(Verb.evict, v, (gid,), for_model=w.name,
                                      text=f"evict {v} ({why}) for {w.name}: {w.queued} queued, {cause}"))
        # The newcomer starts only once the memory is really free (next decisions), so two models
        # that do not fit together are never resident at the same moment.

    # 3. Drained models whose last in-flight job ended leave.
    for m in models:
        if m.name in draining and m.in_flight == 0:
            targets[m.name] = 0
            draining.discard(m.name)
        if targets[m.name] == 0:
            placements[m.name] = []

    # 4. Extra replicas for deep queues where room allows (max_replicas > 1), unless a model with
    # work is still cold (adding replicas here changes no cold model's target).
    cold_with_work = any(m.queued > 0 and targets[m.name] == 0 for m in models)
    for m in sorted(models, key=lambda m: _urgency(m, cfg)):
        if m.name in draining or targets[m.name] == 0 or targets[m.name] >= m.max_replicas:
            continue
        if m.replicas == targets[m.name] and m.queued > m.in_flight:
            room = [g for g in _allowed(m, gpus) if free(g.id) >= m.vram_gb and g.id not in placements[m.name]]
            if room and not cold_with_work:
                g = min(room, key=lambda g: (free(g.id), g.id))
                targets[m.name] += 1
                placements[m.name].append(g.id)
                take(g.id, m.vram_gb)
                actions.append(Action(Verb.add, m.name, (g.id,), text=f"add a {m.name} replica on {g.id}: {m.queued} queued"))

    return Decision(
        targets=targets,
        placements={k: tuple(v) for k, v in placements.items() if targets[k] > 0},
        draining=frozenset(draining),
        actions=tuple(actions),
        unplaceable=unplaceable,
    )


def _eviction_plan(w, fits, on_gpu, by, targets, draining, free, cfg, credit):
    """Cheapest way to make room for `w` on one GPU: (gpu id, victims, swap cost in load seconds) or
    None.

    Idle models (no queue, nothing running) may always go. A model with work only goes when `w`
    is urgent (waited max_wait_s, or outranks it) and the swap budget on that GPU pays for the
    round trip (w's load and the victim's reload; a higher-priority `w` that is due goes anyway);
    among those, the one whose queue empties soonest.
    """
    best = None
    hungry = starving(w, cfg)
    for g in fits:
        residents = [m for m in on_gpu[g.id] if targets[m.name] > 0 and m.name != w.name]
        idle = sorted((m for m in residents if m.queued == 0 and m.in_flight == 0),
                      key=lambda m: (-(m.idle_s or 0.0), m.name))
        # A busy resident may start its next job any moment: count one job of it to drain.
        drain_s = max((m.service_s for m in residents if m.in_flight > 0 or m.queued > 0), default=0.0)
        # Due: waiting any longer would start w's oldest job after max_wait_s. service_s is a mean,
        # so that job counts half again (a long one must not push w past the bound).
        due = w.oldest_wait_s + DRAIN_MARGIN * drain_s + load_cost(w) >= cfg.max_wait_s

        # A full bucket pays for any one swap, even one dearer than the cap (or it would never run).
        have = credit.get(g.id, math.inf) if credit is not None and cfg.swap_budget is not None else math.inf
        if have >= (cfg.swap_budget or 0.0) * cfg.swap_window_s:
            have = math.inf

        def may_displace(m: ModelView) -> bool:
            if m.replicas == 0:
                return False  # still loading: displacing it would waste the load and can livelock
            if m.in_flight == 0 and m.resident_s < DRAIN_MARGIN * m.service_s:
                return False  # just loaded, about to start its first job: let it (else the load was for nothing)
            if hungry:  # past the starvation bound: priority and budget no longer hold it back
                return m.resident_s >= cfg.min_resident_s
            affordable = have >= load_cost(w) + reload_cost(m)
            if w.max_priority > m.max_priority:
                return affordable or due
            return due and m.resident_s >= cfg.min_resident_s and affordable

        busy = sorted((m for m in residents if (m.queued > 0 or m.in_flight > 0) and m.name not in draining
                       and may_displace(m)),
                      key=lambda m: (m.max_priority, m.queued * m.service_s, m.name))
        need = w.vram_gb - free(g.id)
        picked: list[ModelView] = []
        freed = 0.0
        for m in idle + busy:
            if freed >= need:
                break
            picked.append(m)
            freed += m.vram_gb
        # Keep whoever the rest already make room without (a small idle model picked first, then a
        # big one that alone frees enough): every needless eviction is a reload later.
        for m in list(picked):
            if freed - m.vram_gb >= need:
                picked.remove(m)
                freed -= m.vram_gb
        chosen = [m.name for m in picked]
        cost = sum(0.0 if m in idle else 1.0 + m.queued * m.service_s for m in picked)
        if freed >= need:
            key = (cost, len(chosen), g.id)
            if best is None or key < best[0]:
                best = (key, g.id, chosen, load_cost(w) + sum(reload_cost(by[m]) for m in chosen))
    return None if best is None else (best[1], best[2], best[3])


def reload_cost(m: ModelView) -> float:
    """What swapping out `m` costs beyond the newcomer's load: its reload (warm when its weights
    stay in host memory, core.warm.load_cost), if it still has work."""
    return load_cost(m) if m.queued > 0 else 0.0

