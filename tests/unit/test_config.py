"""The orchestrator config (serve_config.yaml args): validated at build time, errors name the field."""

from pathlib import Path

import pytest
import yaml

from gpu_orchestrator.config import ConfigError, load_runtime_env, parse_config

ROOT = Path(__file__).resolve().parents[2]


def shipped_args():
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"]


def test_shipped_serve_config_is_valid():
    cfg = parse_config(shipped_args())
    assert cfg.app("echo").synthetic and cfg.models["echo"].impl == "deployments.echo:Echo"
    assert load_runtime_env(cfg.models["echo"].runtime_env) == {"env_vars": {"GPU_ORCH_MODEL": "echo"}}


def test_error_names_the_bad_field():
    args = shipped_args()
    args["apps"][0]["parameters"][1]["type"] = "float"
    args["apps"][0]["max_attempts"] = 0
    with pytest.raises(ConfigError) as e:
        parse_config(args)
    msg = str(e.value)
    assert "args.apps[0].parameters[1].type" in msg and "args.apps[0].max_attempts" in msg


def test_unknown_deployment_and_duplicate_ids():
    args = shipped_args()
    args["apps"].append(dict(args["apps"][0], deployment="nope"))
    with pytest.raises(ConfigError, match=r"apps\[1\].id: duplicate app id 'echo'.*apps\[1\].deployment: 'nope'"):
        parse_config(args)


def test_unknown_keys_rejected():
    args = shipped_args()
    args["routr"] = {}
    with pytest.raises(ConfigError, match="args.routr: Extra inputs are not permitted"):
        parse_config(args)


def test_missing_runtime_env_file():
    with pytest.raises(ConfigError, match="not found"):
        load_runtime_env("runtime_envs/missing.yaml")
