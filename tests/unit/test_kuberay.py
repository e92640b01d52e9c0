"""deploy/kuberay/rayservice.yaml: what `gpu-orch render rayservice` makes from serve_config.yaml
(a drift fails here), valid against KubeRay v1.7.0's RayService CRD (vendored in deploy/kuberay/crd/)
with unknown fields refused, and its serveConfigV2 valid for Ray Serve."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpu_orchestrator.ops import kuberay
from gpu_orchestrator.cli import cli

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "kuberay" / "crd" / "ray.io_rayservices.yaml"
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
SAMPLE = ROOT / "deploy" / "kuberay" / "crd" / "sample-ray-service.high-availability.yaml"


def serve_config() -> dict:
    return yaml.safe_load((ROOT / "serve_config.yaml").read_text())


def test_the_committed_manifest_is_what_serve_config_renders(monkeypatch):
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(cli, ["render", "rayservice", "--check"])
    assert r.exit_code == 0, f"{r.output}\nrun `gpu-orch render rayservice` and commit deploy/kuberay/rayservice.yaml"
    assert MANIFEST.read_text() == kuberay.render_text(serve_config())


def test_a_changed_serve_config_is_caught_as_drift(tmp_path, monkeypatch):
    cfg = serve_config()
    cfg["applications"][0]["args"]["router"]["lease_s"] = 45
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    out = str(MANIFEST)
    r = CliRunner().invoke(cli, ["render", "rayservice", "--config", "serve_config.yaml", "--out", out, "--check"])
    assert r.exit_code == 1 and "differs" in r.output
    r = CliRunner().invoke(cli, ["render", "rayservice", "--config", "serve_config.yaml", "--out", "new.yaml"])
    assert r.exit_code == 0 and "lease_s: 45" in (tmp_path / "new.yaml").read_text()


def test_the_manifest_is_valid_strictly_and_serve_takes_its_config():
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert kuberay.problems(manifest, CRD) == []
    spec = manifest["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    assert serve == kuberay.serve_config_for_kubernetes(serve_config())  # the whole config, only the host opened
    assert serve["http_options"]["host"] == "0.0.0.0"
    rc = spec["rayClusterConfig"]
    assert rc["gcsFaultToleranceOptions"]["redisPassword"]["valueFrom"]["secretKeyRef"]["name"] == "gpu-orchestrator"
    env = {e["name"]: e for e in rc["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "gpu-orchestrator", "key": "database-url"}
    for g in rc["workerGroupSpecs"]:
        (c,) = g["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["env"] == list(env.values())
        assert f'"node_type:{g["groupName"]}":1' in g["rayStartParams"]["resources"]  # what models[].pin names


def test_the_validator_passes_upstreams_sample_and_catches_typos_and_types():
    sample = next(d for d in yaml.safe_load_all(SAMPLE.read_text()) if d.get("kind") == "RayService")
    assert kuberay.problems(sample, CRD) == []
    typo = copy.deepcopy(sample)
    typo["spec"]["rayClusterConfig"]["workerGroupSpec"] = typo["spec"]["rayClusterConfig"].pop("workerGroupSpecs")
    assert kuberay.problems(typo, CRD) == [
        "unknown field: spec.rayClusterConfig: Additional properties are not allowed ('workerGroupSpec' was unexpected)"]
    wrong = copy.deepcopy(sample)
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "five"
    assert any(p.startswith("schema: spec.rayClusterConfig.workerGroupSpecs.0.maxReplicas") for p in kuberay.problems(wrong, CRD))
    bad_serve = copy.deepcopy(sample)
    bad_serve["spec"]["serveConfigV2"] = "applications:\n  - name: x\n    deployments: [{name: d, num_replicas: lots}]\n"
    assert any(p.startswith("serveConfigV2:") and "import_path" in p for p in kuberay.problems(bad_serve, CRD))


@pytest.mark.parametrize("field", ["rayStartParam", "groupNme"])
def test_a_typo_in_a_worker_group_is_named(field):
    manifest = yaml.safe_load(MANIFEST.read_text())
    group = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group[field] = group.get(field[:-1], "x") if field == "rayStartParam" else "x"
    assert any(f"'{field}' was unexpected" in p for p in kuberay.problems(manifest, CRD))
