"""Importing the original system's config/apps.yaml."""

from pathlib import Path

import pytest
import yaml

from gpu_orchestrator.core.apps import AppSpec, validate_params
from gpu_orchestrator.ops.seed import convert

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_seed_converts_with_every_dropped_field_reported():
    res = convert(yaml.safe_load((ROOT / "config/apps.yaml").read_text()))
    apps = {a["id"]: AppSpec.model_validate(a) for a in res.apps}
    assert set(apps) == {"sdxl", "whisper", "flux-cloud"}
    sdxl = apps["sdxl"]
    assert sdxl.kind.value == "local" and sdxl.deployment == "sdxl"
    w = sdxl.param("width")
    assert (w.type, w.default, w.minimum, w.maximum) == ("integer", 1024, 512, 2048)
    assert apps["whisper"].param("task").choices == ["transcribe", "translate"]
    assert apps["flux-cloud"].kind.value == "replicate"
    assert apps["flux-cloud"].cloud.model == "black-forest-labs/flux-schnell"  # the seed's endpoint
    joined = "\n".join(res.notes)
    assert "apps[0].gpu_vram_gb = '12': declare it on the model deployment: models.sdxl.vram_gb: 12" in res.notes
    for dropped in ("apps[0].queue", "apps[0].docker_image", "apps[1].docker_image", "apps[0].type"):
        assert dropped in joined
    # Seed-style string numbers validate against the converted schema.
    assert validate_params(sdxl, {"prompt": "a", "width": "768"})["width"] == 768


def test_unknown_fields_and_param_keys_are_reported():
    res = convert([{"id": "x", "weird": 1, "parameters": {"n": {"type": "int", "step": 2}}}])
    assert any("apps[0].weird" in n for n in res.notes)
    assert any("apps[0].parameters.n.step" in n for n in res.notes)
    assert res.apps[0]["parameters"][0] == {"name": "n", "type": "integer"}


def test_bad_seed_errors_name_the_app():
    with pytest.raises(ValueError, match=r"apps\[0\]: each app needs an 'id'"):
        convert([{"name": "no id"}])
    with pytest.raises(ValueError, match=r"apps\[0\] \(Bad ID\)"):
        convert([{"id": "Bad ID"}])
