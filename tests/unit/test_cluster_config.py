"""cluster.yaml is a valid Ray cluster launcher config (Ray's own schema, after the defaults `ray up`
fills in), and its GPU node types declare what the arbiter and the KubeRay manifest use: their
VRAM and node_type:<type>."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpu_orchestrator.ops import kuberay

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_schema_and_declares_node_types():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # raises on an unknown or mistyped field
    types = cfg["available_node_types"]
    groups = {g["name"]: g for g in kuberay.GPU_GROUPS}
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert set(gpu_types) == set(groups)  # the same GPU node types as the KubeRay worker groups
    for name, t in gpu_types.items():
        assert t["resources"][f"node_type:{name}"] == 1 and t["resources"]["vram_gb"] == groups[name]["vram_gb"]
    assert not types[cfg["head_node_type"]]["resources"].get("GPU")


def test_the_head_starts_the_stack_on_external_services_with_keys_required():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    head = cfg["head_start_ray_commands"]
    up = head[-1]
    assert "gpu-orch up --host 0.0.0.0" in up and "RAY_ADDRESS=127.0.0.1:6380" in up  # after `ray start`
    assert any("ray start --head --port=6380" in c for c in head[:-1])
    env_file = next(remote for remote, local in cfg["file_mounts"].items() if local == "./deploy/cluster.env")
    assert f". {env_file.replace('/home/ubuntu', '~')}" in up
    example = dict(line.split("=", 1) for line in (ROOT / "deploy" / "cluster.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"DATABASE_URL", "REDIS_URL"} <= set(example)  # external services: the embedded ones are one node's
    assert "deploy/cluster.env" in (ROOT / ".gitignore").read_text().splitlines()  # it holds passwords
    # every node runs Ray with the same token
    assert all(c.startswith("RAY_AUTH_MODE=token") for c in head + cfg["worker_start_ray_commands"] if "ray start" in c)
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
