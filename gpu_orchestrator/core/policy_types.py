"""The arbiter policy's types (core.policy.decide): what it is given (Gpu, ModelView, PolicyConfig) and
what it returns (Verb, Action, Decision). Pure data; no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Gpu:
    id: str
    vram_gb: float
    node_type: str = ""
    virtual: bool = False  # accounting only (the demo's): labelled so wherever it is shown


@dataclass(frozen=True)
class ModelView:
    """What the arbiter knows of one model deployment at decision time."""

    name: str
    vram_gb: float
    load_s: float = 10.0  # measured (or declared) time to become resident
    service_s: float = 1.0  # mean job time, for "whose queue empties soonest"
    replicas: int = 0  # resident replicas
    pending: int = 0  # replicas starting / loading
    stopping: int = 0  # replicas asked to stop that still hold memory
    placement: tuple[str, ...] = ()  # GPU ids its replicas (resident, pending, stopping) occupy
    in_flight: int = 0
    queued: int = 0
    oldest_wait_s: float = 0.0
    max_priority: int = 0
    idle_s: float | None = None  # since its last job ended; None while busy or never used
    resident_s: float = 0.0  # since it became resident (protects a fresh batch from thrash)
    cold_s: float | None = None  # since it was last resident; None: not resident since anyone knows
    pin: str | None = None  # a GPU id or node type; None = anywhere
    max_replicas: int = 1
    idle_ttl_s: float | None = None  # per-model override of PolicyConfig.idle_ttl_s
    # The warm tier (core.warm): the measured load time from host memory, and whether its next load
    # comes from there (its weights are held warm now, or, for a resident model, would be kept warm
    # when it leaves). core.warm.load_cost picks the load time the policy weighs.
    warm_load_s: float | None = None
    warm: bool = False

    @property
    def holds(self) -> int:
        return self.replicas + self.pending + self.stopping


@dataclass(frozen=True)
class PolicyConfig:
    idle_ttl_s: float = 300.0
    # The wait bound: a cold model's oldest job should start within max_wait_s. The model displaces
    # a busy one once waiting any longer would miss that: its wait + the busy model's in-flight
    # drain + its own load reach max_wait_s. Until then the resident model keeps its batch.
    max_wait_s: float = 60.0
    # A model that just became resident serves at least this long before a waiting model may
    # displace it for age alone (priority may): a guard against swapping straight back when every
    # queue is past due. Worst-case wait is then about max_wait_s + min_resident_s.
    min_resident_s: float = 30.0
    # Under overload, loads take at most this share of a GPU's time (the swap budget): swapping out a
    # model that still has queued work must be paid for, both ways (its reload included), from
    # credit that refills at this share of wall time. A rare swap is paid from the allowance saved
    # over `swap_window_s`; a stream of them waits for credit, so batches lengthen instead.
    # None: no budget (the bound is kept by swapping as often as it takes).
    swap_budget: float | None = 0.08
    swap_window_s: float = 150.0
    # The starvation bound: a model whose work has waited for the GPU this long goes before every
    # other, whatever the priorities and the swap budget (None: STARVATION_FACTOR x max_wait_s).
    # No model with queued work then stays cold much longer than this plus min_resident_s.
    starvation_s: float | None = None

    @property
    def starvation_bound_s(self) -> float:
        return self.starvation_s if self.starvation_s is not None else STARVATION_FACTOR * self.max_wait_s


class Verb(str, Enum):
    """What the policy decided for one model. The first five change residency; the last two only
    explain why a model with work stays cold."""

    load = "load"  # a cold model gets a replica
    add = "add"  # a resident model gets one more replica
    evict = "evict"  # to zero now, to make room for another model
    drain = "drain"  # no new work; to zero when its in-flight jobs end (room for another model)
    scale_to_zero = "scale_to_zero"  # idle for its TTL
    wait = "wait"  # cold with work, no room yet and not due to displace anyone
    cannot_place = "cannot_place"  # no allowed GPU is big enough (or none matches its pin)


STARVATION_FACTOR = 10.0

ACTING = frozenset({Verb.load, Verb.add, Verb.evict, Verb.drain, Verb.scale_to_zero})


@dataclass(frozen=True)
class Action:
    verb: Verb
    model: str
    gpus: tuple[str, ...] = ()  # where a load or an added replica goes, or where room is made
    for_model: str | None = None  # the model an eviction or drain makes room for
    text: str = ""  # the human reason (GET /v1/workers shows it)

    @property
    def acting(self) -> bool:
        return self.verb in ACTING

    @property
    def concerned(self) -> tuple[str, ...]:
        """The model acted on, and the one the room is made for (if any)."""
        return (self.model,) if self.for_model in (None, self.model) else (self.model, self.for_model)

    def concerns(self, model: str) -> bool:
        return model in self.concerned

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Decision:
    targets: dict[str, int]  # replicas per model deployment
    placements: dict[str, tuple[str, ...]]  # GPU ids per model (for the models with targets > 0)
    draining: frozenset[str]  # resident models that get no new work (being swapped out)
    actions: tuple[Action, ...] = field(default_factory=tuple)
    # Models with queued work that no GPU can ever hold (too big, or pinned to nothing), once their
    # oldest job has waited max_wait_s: the router fails those jobs with the reason, not leave them.
    unplaceable: dict[str, str] = field(default_factory=dict)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(a.text for a in self.actions)

    def dispatchable(self, m: ModelView) -> bool:
        """Whether the dispatcher may hand this model new work now."""
        return m.replicas > 0 and m.name not in self.draining and self.targets.get(m.name, 0) > 0
