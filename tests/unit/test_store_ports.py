"""The store's protocol split by who uses it (store/base.py): each service calls only what its port
declares (read from the source), the ports together are the store, and both stores implement every
method with the protocol's parameters."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from gpu_orchestrator.store import base
from gpu_orchestrator.store.memory import MemoryJobStore
from gpu_orchestrator.store.postgres import PostgresJobStore

SERVICE = Path(base.__file__).resolve().parents[1] / "service"
PORTS = {  # service module -> the port its store is typed as
    "jobs.py": base.JobIntake, "intake.py": base.JobIntake,
    "dispatcher.py": base.JobLeases, "claims.py": base.JobLeases, "outcomes.py": base.JobLeases,
    "reports.py": base.JobReports, "fleet.py": base.JobReports, "retention.py": base.JobRetention,
}


def declared(proto: type) -> set[str]:
    return {n for c in proto.__mro__ if c.__module__ == base.__name__ for n, v in vars(c).items()
            if callable(v) and not n.startswith("_")}


def store_calls(path: Path) -> set[str]:
    """Names used as `self.store.X` or `store.X` in a module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            v = node.value
            if (isinstance(v, ast.Attribute) and v.attr == "store") or (isinstance(v, ast.Name) and v.id == "store"):
                out.add(node.attr)
    return out


@pytest.mark.parametrize("module", sorted(PORTS))
def test_each_service_calls_only_what_its_port_declares(module):
    used = store_calls(SERVICE / module)
    assert used, f"{module}: no store call found (the checker reads nothing?)"
    assert used <= declared(PORTS[module]), f"{module} calls {sorted(used - declared(PORTS[module]))} past its port"


def test_the_ports_cover_the_store():
    assert declared(base.JobStore) == set().union(*(declared(p) for p in (
        base.JobIntake, base.JobLeases, base.JobReports, base.JobRetention))) | {"close", "leader_lock"}


def test_both_stores_have_every_protocol_method_with_the_same_parameters():
    methods = declared(base.JobStore)  # every port's methods and the root's two
    assert {"submit", "claim", "leader_lock", "ping"} <= methods
    for name in methods:
        want = list(inspect.signature(getattr(base.JobStore, name)).parameters)
        for impl in (MemoryJobStore, PostgresJobStore):
            got = list(inspect.signature(getattr(impl, name)).parameters)
            assert got == want, f"{impl.__name__}.{name}{got} differs from the protocol's {want}"
