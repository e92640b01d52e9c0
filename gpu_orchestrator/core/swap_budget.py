"""The swap budget: how much GPU time the arbiter may still spend loading models, per GPU pool.

A bucket per pool that refills at `share` of wall-clock time up to `share * window_s` and is spent
by every swap-in started there (the load time of a model that another was evicted or drained for;
a load into free memory is not a swap and costs nothing). So over any window, swaps take at most
`share` of the GPU's time plus one window's allowance: a rare swap is free, a stream of them is
rationed. The policy (core.policy.decide) reads the credit; only swapping out a model that still
has queued work needs it. Pure: the caller passes the time; the simulator and the live arbiter
loop share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_orchestrator.core.policy_types import Decision


@dataclass
class SwapBudget:
    share: float | None  # loads may take this share of GPU time while swaps compete; None: no budget
    window_s: float  # the allowance saved up while no swap was needed: share * window_s seconds
    _credit: dict[str, float] = field(default_factory=dict)
    _at: float | None = None
    _room_made: dict[str, str] = field(default_factory=dict)  # model -> GPU where room was made for it

    @property
    def cap_s(self) -> float:
        return (self.share or 0.0) * self.window_s

    def refill(self, now: float) -> None:
        if self.share is None:
            return
        if self._at is not None and now > self._at:
            gained = (now - self._at) * self.share
            for gid in self._credit:
                self._credit[gid] = min(self.cap_s, self._credit[gid] + gained)
        self._at = now if self._at is None else max(self._at, now)

    def note(self, d: Decision) -> None:
        """The policy evicted or drained models to make room: the loads they make room for are
        swap-ins (a drain repeated tick after tick is noted once)."""
        for a in d.actions:
            if a.for_model and a.gpus:
                self._room_made[a.for_model] = a.gpus[0]

    def forget_room(self) -> None:
        """Leadership changed hands: room made in an earlier term is not this term's swap."""
        self._room_made.clear()

    def loaded(self, model: str, load_s: float) -> None:
        """`model` started loading: a swap-in if room was made for it, paid from that GPU's credit.
        Swaps the policy could not refuse (a higher-priority job due, an idle model replaced) may
        run the credit into debt, down to one window's allowance."""
        gpu = self._room_made.pop(model, None)
        if gpu is not None and self.share is not None:
            self._credit[gpu] = max(-self.cap_s, self.credit(gpu) - load_s)

    def credit(self, gpu: str) -> float:
        return self._credit.setdefault(gpu, self.cap_s)

    def credits(self, gpus: list[str]) -> dict[str, float] | None:
        """What decide() takes: per GPU, the credit left; None when there is no budget."""
        return {g: self.credit(g) for g in gpus} if self.share is not None else None
