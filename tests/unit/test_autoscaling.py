"""The arbiter's channel to Serve's autoscaler: what router replicas report (encode) and what the
application-level policy makes of it (pick_targets, arbiter_policy), with fake Serve contexts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpu_orchestrator.bus.decisions import Snapshot
from gpu_orchestrator.serve.autoscaling import LEADER_KEY, arbiter_policy, encode, pick_targets


@dataclass(frozen=True)
class Point:  # Serve's TimeStampedValue
    timestamp: float
    value: float


@dataclass
class Ctx:  # the part of Serve's AutoscalingContext the policy reads
    deployment_name: str
    target_num_replicas: int
    raw_metrics: dict[str, dict[Any, list[Point]]] = field(default_factory=dict)


def snap(ts: float, **targets: int) -> Snapshot:
    return Snapshot(ts=ts, leader="r", targets=targets, dispatchable=[], draining=[], reasons=[])


def collected(reports: dict[str, dict[str, float]], at: float = 100.0) -> dict[str, dict[str, list[Point]]]:
    """Serve's raw_metrics from each router replica's record_autoscaling_stats."""
    raw: dict[str, dict[str, list[Point]]] = {}
    for replica, stats in reports.items():
        for name, value in stats.items():
            raw.setdefault(name, {})[replica] = [Point(at - 1, -1.0), Point(at, value)]  # latest wins
    return raw


def contexts(raw, current: dict[str, int]) -> dict[str, Ctx]:
    out = {"app#router": Ctx("router", 2, raw)}
    out.update({f"app#{name}": Ctx(name, n) for name, n in current.items()})
    return out


def test_encode_then_decode_gives_the_leaders_targets():
    reports = {"r1": encode(snap(50.0, **{"echo-a": 1, "echo-b": 0}), is_leader=True),
               "r2": encode(None, is_leader=False), "r3": encode(snap(49.0, **{"echo-a": 0}), is_leader=False)}
    assert reports["r2"] == reports["r3"] == {LEADER_KEY: 0.0}
    assert pick_targets(collected(reports)) == {"echo-a": 1, "echo-b": 0}
    decisions, _ = arbiter_policy(contexts(collected(reports), {"echo-a": 0, "echo-b": 1, "echo-c": 1}))
    # The router keeps its own count; a deployment the leader did not name keeps its count.
    assert decisions == {"app#router": 2, "app#echo-a": 1, "app#echo-b": 0, "app#echo-c": 1}


def test_a_leader_without_a_decision_yet_reports_nothing():
    assert encode(None, is_leader=True) == {LEADER_KEY: 0.0}


def test_freshest_leader_wins_during_a_handover():
    reports = {"old": encode(snap(10.0, **{"echo-a": 1, "echo-b": 0}), is_leader=True),
               "new": encode(snap(12.0, **{"echo-a": 0, "echo-b": 1}), is_leader=True)}
    assert pick_targets(collected(reports)) == {"echo-a": 0, "echo-b": 1}
    reports["old"] = encode(snap(13.0, **{"echo-a": 1, "echo-b": 0}), is_leader=True)
    assert pick_targets(collected(reports)) == {"echo-a": 1, "echo-b": 0}


def test_no_leader_report_changes_nothing():
    current = {"echo-a": 1, "echo-b": 0}
    unchanged = {"app#router": 2, "app#echo-a": 1, "app#echo-b": 0}
    assert pick_targets({}) is None
    assert arbiter_policy(contexts({}, current))[0] == unchanged
    followers = collected({"r1": encode(None, is_leader=False), "r2": encode(snap(1.0, **{"echo-a": 0}), False)})
    assert pick_targets(followers) is None
    assert arbiter_policy(contexts(followers, current))[0] == unchanged
    # No router context at all (it is being redeployed): nothing changes either.
    ctxs = contexts({}, current)
    del ctxs["app#router"]
    assert arbiter_policy(ctxs)[0] == {"app#echo-a": 1, "app#echo-b": 0}
