"""cluster.yaml is a valid Ray cluster launcher config (Ray's own schema, after the defaults `ray up`
fills in), and its GPU node types declare what the arbiter and the KubeRay manifest use: their
VRAM and node_type:<type>."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpu_orchestrator import kuberay

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
