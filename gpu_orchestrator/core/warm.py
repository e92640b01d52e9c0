"""The warm tier: model weights kept in a node's host memory after their replica left the GPU, so
the next load copies them back (`warm_load_s`) instead of reading them from disk and building the
model (`load_s`). Pure: no I/O, no clock; the caller passes the time.

Host memory is a budget per node (`budget_gb`). A model's host footprint is its `vram_gb` unless
given. When a model leaves the GPU it is kept warm if it fits the budget at all; when the warm
copies already held leave too little room, copies are dropped to make it:

- the least recently used copy goes first (the one that left the GPU longest ago: the least likely
  to be needed soon; the one just evicted is the most recent, so it is always kept when it fits);
- ties by the smaller reload saving (load_s - warm_load_s: the copy that saves least goes first),
  then by name (deterministic).

A model bigger than the whole budget never becomes warm, and the copies held never add up to more
than the budget. A warm copy is consumed when its model loads again (the weights go back to the GPU
and the host memory is freed); the model becomes warm again when it next leaves.

Two users: the simulator (WarmTier: a copy's time is when it left the GPU, so the one leaving now
always stays when it fits) and the live arbiter (plan_parking: a copy's time is its model's last
job, so a model leaving on its idle TTL competes with the copies held by when it was last used,
and the room also keeps the node's free RAM above a floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_orchestrator.core.policy_types import ModelView


def load_cost(m: ModelView) -> float:
    """The seconds `m`'s next load takes: from host memory when it is warm and that time is known,
    else from disk (load_s)."""
    return m.warm_load_s if m.warm and m.warm_load_s is not None else m.load_s


@dataclass(frozen=True)
class WarmCopy:
    name: str
    gb: float  # its host footprint
    saving_s: float  # load_s - warm_load_s: what keeping it saves on its next load
    since: float  # when it left the GPU (its last use)


def drop_order(copies: list[WarmCopy]) -> list[WarmCopy]:
    """Which warm copy goes first when room is needed: least recently used, ties by the smaller
    reload saving, then by name."""
    return sorted(copies, key=lambda c: (c.since, c.saving_s, c.name))


def victims(held: list[WarmCopy], budget_gb: float, need_gb: float) -> list[WarmCopy] | None:
    """The copies to drop so that `need_gb` more fits in `budget_gb` beside the rest of `held`, in
    drop order; None when it cannot fit even with every copy dropped (bigger than the budget)."""
    if need_gb > budget_gb:
        return None
    used = sum(c.gb for c in held)
    out: list[WarmCopy] = []
    for c in drop_order(held):
        if used + need_gb <= budget_gb + 1e-9:
            break
        out.append(c)
        used -= c.gb
    return out


@dataclass
class WarmTier:
    """One node's warm copies against its host-memory budget."""

    budget_gb: float
    held: dict[str, WarmCopy] = field(default_factory=dict)
    dropped: int = 0  # copies dropped to make room for another

    @property
    def used_gb(self) -> float:
        return sum(c.gb for c in self.held.values())

    def is_warm(self, name: str) -> bool:
        return name in self.held

    def would_keep(self, gb: float) -> bool:
        """Whether a model of this host footprint would be kept warm on leaving the GPU (the one
        just evicted is the most recently used, so it stays whenever it fits the budget at all)."""
        return gb <= self.budget_gb

    def keep(self, name: str, gb: float, saving_s: float, now: float) -> list[str]:
        """`name` left the GPU at `now`: keep its weights warm if they fit, dropping the copies the
        rule picks to make room. Returns the names dropped (`name` itself when it cannot fit)."""
        self.held.pop(name, None)
        out = victims(list(self.held.values()), self.budget_gb, gb)
        if out is None:
            return [name]
        for c in out:
            del self.held[c.name]
        self.dropped += len(out)
        self.held[name] = WarmCopy(name, gb, saving_s, now)
        return [c.name for c in out]

    def take(self, name: str) -> bool:
        """`name` starts loading: whether it loads warm (its copy, if any, is consumed)."""
        return self.held.pop(name, None) is not None


# -- the live tier: which leaving models park, which parked copies go (per node) -------------------

@dataclass(frozen=True)
class HostMemory:
    """One node's host memory as its model replicas report it: the warm tier's budget there, and
    the RAM free now (None: not reported)."""

    budget_gb: float
    free_gb: float | None = None


def room(host: HostMemory, held_gb: float, min_free_gb: float) -> float:
    """What the node's parked copies may hold in all: the budget, less whatever keeps `min_free_gb`
    of RAM free (the copies already held are counted as theirs, not as used)."""
    if host.free_gb is None:
        return host.budget_gb
    return max(0.0, min(host.budget_gb, held_gb + host.free_gb - min_free_gb))


def plan_parking(held: dict[str, list[WarmCopy]], leaving: dict[str, list[WarmCopy]],
                 hosts: dict[str, HostMemory], min_free_gb: float) -> tuple[set[str], set[str]]:
    """Per node: the copies held there now (`held`: parked, or being parked) and the models leaving
    its GPU now (`leaving`). Returns (the leaving models to park, the held copies to drop). Held and
    leaving copies compete alike: one bigger than the node's room (its budget, less whatever would
    leave under min_free_gb of RAM free) goes; while the rest exceed the room, copies go in
    drop_order (the least recently used first), so the copies kept never exceed the room. A node
    with no memory reported parks nothing new."""
    park: set[str] = set()
    drop: set[str] = set()
    for node in sorted(set(held) | set(leaving)):
        here, going = held.get(node, []), leaving.get(node, [])
        host = hosts.get(node)
        if host is None:
            continue
        space = room(host, sum(c.gb for c in here), min_free_gb)
        fits = [c for c in here + going if c.gb <= space]  # one bigger than the room never stays
        gone = {c.name for c in here + going if c.gb > space} | {c.name for c in victims(fits, space, 0.0) or []}
        park |= {c.name for c in going if c.name not in gone}
        drop |= {c.name for c in here if c.name in gone}
    return park, drop
