"""The import contract (docs/architecture.md): core <- store, bus <- service <- api <- root <- serve,
and Ray only at the edge. Read from the source (ast), so a violation fails here before it reaches a review."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "gpu_orchestrator"

# What each room may import of the package (besides itself). `store.artifacts` is the file store's
# adapter: the services, the API's file routes and the models use it, and nothing else of store/.
ALLOWED = {
    "core": set(),
    "store": {"core"},
    "bus": {"core"},
    "service": {"core", "store", "store.artifacts", "bus", "logs"},
    "api": {"core", "service", "store.artifacts"},
    "root": {"core", "store", "store.artifacts", "bus", "service", "api", "logs"},  # the composition root
    "models": {"core", "bus", "store.artifacts", "logs", "serve.context"},  # the serve context only
}
# Ray at the edge only: the Serve application (serve/), the operator's tooling (ops/: the Ray head
# `gpu-orch up` starts, its token, the KubeRay manifest) and the CLI, never below.
RAY_FREE = ("core", "store", "bus", "service", "api", "root", "models")


def imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by a file (relative imports resolved), with their line."""
    mod = path.relative_to(PKG.parent).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(mod[: len(mod) - node.level])
                out.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            else:
                out.append((node.module or "", node.lineno))
            # `from gpu_orchestrator import logs` imports gpu_orchestrator.logs
            out += [(f"{out[-1][0]}.{a.name}", node.lineno) for a in node.names]
    return out


def room_of(name: str) -> str | None:
    """`gpu_orchestrator.service.cloud.modal` -> `service`; the serve context keeps its module."""
    parts = name.split(".")
    if parts[0] != "gpu_orchestrator" or len(parts) < 2:
        return None
    if len(parts) > 2 and (parts[1], parts[2]) in (("serve", "context"), ("store", "artifacts")):
        return f"{parts[1]}.{parts[2]}"
    return parts[1]


def test_each_room_imports_only_the_rooms_below_it():
    bad = []
    for room, allowed in ALLOWED.items():
        for f in sorted((PKG / room).rglob("*.py")):
            for name, line in imports(f):
                target = room_of(name)
                if target is not None and target.split(".")[0] != room and target not in allowed:
                    bad.append(f"{f.relative_to(PKG.parent)}:{line} imports {name}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_ray_is_imported_only_at_the_edge():
    bad = [f"{f.relative_to(PKG.parent)}:{line} imports {name}"
           for room in RAY_FREE for f in sorted((PKG / room).rglob("*.py"))
           for name, line in imports(f) if name == "ray" or name.startswith("ray.")]
    assert not bad, "Ray outside serve/ and the operator tooling:\n" + "\n".join(bad)


def test_the_contract_sees_imports():
    # The checker itself: a relative import resolves, a function-level import counts.
    f = PKG / "api" / "jobs.py"
    names = {n for n, _ in imports(f)}
    assert "gpu_orchestrator.service.jobs" in names and "gpu_orchestrator.api.deps" in names
    assert "gpu_orchestrator.logs" in {n for n, _ in imports(PKG / "service" / "jobs.py")}  # from the package
    assert room_of("gpu_orchestrator.serve.context") == "serve.context" and room_of("ray.serve") is None
    assert room_of("gpu_orchestrator.store.artifacts") == "store.artifacts"
