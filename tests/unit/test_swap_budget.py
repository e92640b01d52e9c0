"""The swap budget's bookkeeping: a bucket per GPU pool, spent only by swap-ins."""

import pytest

from gpu_orchestrator.core.policy_types import Action, Decision, Verb
from gpu_orchestrator.core.swap_budget import SwapBudget


def drained_for(model: str, gpu: str = "gpu0") -> Decision:
    return Decision(targets={}, placements={}, draining=frozenset({"a"}),
                    actions=(Action(Verb.drain, "a", (gpu,), for_model=model, text=f"drain a for {model}"),))


def test_starts_full_refills_at_the_share_and_caps():
    b = SwapBudget(share=0.1, window_s=100)
    b.refill(0.0)
    assert b.credit("gpu0") == pytest.approx(10.0)  # a rare swap is paid from the saved allowance
    b.note(drained_for("b"))
    b.loaded("b", 8.0)
    assert b.credit("gpu0") == pytest.approx(2.0)
    b.refill(50.0)
    assert b.credit("gpu0") == pytest.approx(7.0)  # 0.1 s of loading per second of wall time
    b.refill(500.0)
    assert b.credit("gpu0") == pytest.approx(10.0)  # never more than one window's allowance


def test_only_swap_ins_are_paid_for():
    b = SwapBudget(share=0.1, window_s=100)
    b.refill(0.0)
    b.loaded("a", 30.0)  # into free memory: nothing was displaced for it
    assert b.credit("gpu0") == pytest.approx(10.0)
    b.note(drained_for("b"))
    b.note(drained_for("b"))  # a drain repeated on every tick is one swap
    b.loaded("b", 4.0)
    b.loaded("b", 4.0)  # a later load nobody made room for
    assert b.credit("gpu0") == pytest.approx(6.0)


def test_debt_is_bounded_by_one_window():
    b = SwapBudget(share=0.1, window_s=100)
    b.refill(0.0)
    b.note(drained_for("llm", "gpu1"))
    b.loaded("llm", 55.0)  # a due high-priority swap dearer than the whole allowance
    assert b.credit("gpu1") == pytest.approx(-10.0) and b.credit("gpu0") == pytest.approx(10.0)
    b.refill(200.0)
    assert b.credits(["gpu0", "gpu1"]) == pytest.approx({"gpu0": 10.0, "gpu1": 10.0})
