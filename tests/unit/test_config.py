"""The orchestrator config (serve_config.yaml args): validated at build time, errors name the field."""

from pathlib import Path

import pytest
import yaml

from gpu_orchestrator.core.config import ConfigError, parse_config
from gpu_orchestrator.serve.app import load_runtime_env

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
    n = len(args["apps"]) - 1
    with pytest.raises(ConfigError, match=rf"apps\[{n}\].id: duplicate app id 'echo'.*apps\[{n}\].deployment: 'nope'"):
        parse_config(args)


def test_unknown_keys_rejected():
    args = shipped_args()
    args["routr"] = {}
    with pytest.raises(ConfigError, match="args.routr: Extra inputs are not permitted"):
        parse_config(args)


def test_missing_runtime_env_file():
    with pytest.raises(ConfigError, match="not found"):
        load_runtime_env("runtime_envs/missing.yaml")



def test_real_profile_has_real_models_with_gpu_shares_and_their_own_runtime_envs():
    cfg = parse_config(shipped_args())
    assert cfg.profile == "real" and cfg.arbiter.enabled
    for name in ("sdxl", "zimage", "whisper", "llm"):
        m = cfg.models[name]
        assert m.num_gpus > 0 and m.vram_gb > 0 and "demo" not in m.init and m.init.get("model")
        assert load_runtime_env(m.runtime_env)["pip"]["packages"]
    # GPU shares follow VRAM: num_gpus = vram_gb / 80, to within rounding
    for m in cfg.models.values():
        assert abs(m.num_gpus - (m.vram_gb or 0) / 80) < 0.01
    assert "vllm" in str(load_runtime_env(cfg.models["llm"].runtime_env))


def test_demo_profile_runs_tiny_models_under_the_arbiter_on_a_virtual_gpu():
    args = shipped_args()
    args["profile"] = "demo"
    real = parse_config(shipped_args())
    cfg = parse_config(args)
    # The arbiter is on, against one virtual 32 GB GPU, with the demo's short timers.
    a = cfg.arbiter
    assert a.enabled and [(g.id, g.vram_gb, g.virtual) for g in a.gpus] == [("virtual-gpu0", 32.0, True)]
    assert (a.idle_ttl_s, a.min_resident_s, a.max_wait_s, a.swap_budget) == (60, 5, 10, None)
    assert a.vram_resource is None
    for name in ("sdxl", "zimage", "whisper", "llm"):
        m = cfg.models[name]
        # tiny models on CPU, counted at their real VRAM and expected load time
        assert m.init == {"demo": True} and m.num_gpus == 0
        assert (m.vram_gb, m.load_s) == (real.models[name].vram_gb, real.models[name].load_s)
    vram = {n: m.vram_gb for n, m in cfg.models.items()}
    assert vram["sdxl"] + vram["whisper"] <= 32 < vram["sdxl"] + vram["llm"]  # what the demo shows
    assert "vllm" not in str(load_runtime_env(cfg.models["llm"].runtime_env))  # no CUDA download on a CPU
    names = {a.id: a.name for a in cfg.apps}
    assert "untrained" in names["sdxl"] and "untrained" in names["chat"] and "untrained" not in names["echo"]
    # The router re-parses the dumped config: applying the profile twice changes nothing.
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_demo_without_a_virtual_gpu_turns_the_arbiter_off():
    args = shipped_args()
    args.update(profile="demo", demo={})
    cfg = parse_config(args)
    assert not cfg.arbiter.enabled
    assert all(cfg.models[n].vram_gb == 0 and cfg.models[n].num_gpus == 0 for n in ("sdxl", "zimage", "whisper", "llm"))
    assert parse_config(cfg.model_dump(mode="json")) == cfg
    # The real profile ignores the demo block.
    assert parse_config({**shipped_args(), "demo": {"virtual_gpu_gb": 8}}).arbiter.gpus is None


def test_demo_arbiter_overrides_are_checked():
    for bad, field in (({"idle_ttl_s": -1}, "idle_ttl_s"), ({"tick": 1}, "tick"), ({"enabled": False}, "enabled"),
                       ({"gpus": []}, "gpus")):
        args = shipped_args()
        args.update(profile="demo", demo={"virtual_gpu_gb": 32, "arbiter": bad})
        with pytest.raises(ConfigError) as e:
            parse_config(args)
        assert "args.demo" in str(e.value) and field in str(e.value)
    args = shipped_args()
    args.update(profile="demo", demo={"virtual_gpu_gb": 0})
    with pytest.raises(ConfigError, match=r"args\.demo\.virtual_gpu_gb"):
        parse_config(args)


def test_demo_block_is_validated():
    args = shipped_args()
    args["models"]["sdxl"]["demo"] = {"init": {"demo": True}, "gpu": 1}
    with pytest.raises(ConfigError, match=r"models\.sdxl\.demo\.gpu"):
        parse_config(args)


def test_swap_budget_defaults_can_be_switched_off_and_are_checked():
    args = shipped_args()
    a = parse_config(args).arbiter
    assert (a.swap_budget, a.swap_window_s) == (0.08, 150.0)
    args["arbiter"] = {**args.get("arbiter", {}), "swap_budget": None}
    assert parse_config(args).arbiter.swap_budget is None  # no budget: swap as the wait bound asks
    args["arbiter"]["swap_budget"] = 1.5
    with pytest.raises(ConfigError) as e:
        parse_config(args)
    assert "args.arbiter.swap_budget" in str(e.value)


def test_overlap_and_starvation_bound_are_checked():
    args = shipped_args()
    cfg = parse_config(args)
    assert cfg.models["sdxl"].overlap == 0.0 and cfg.arbiter.starvation_s is None  # default: 10 x max_wait_s
    args["models"]["llm"]["overlap"] = 0.4
    assert parse_config(args).models["llm"].overlap == 0.4
    for bad in (1.2, -0.1):
        args["models"]["llm"]["overlap"] = bad
        with pytest.raises(ConfigError) as e:
            parse_config(args)
        assert "models.llm.overlap" in str(e.value)
    args["models"]["llm"]["overlap"] = 0.0
    args["arbiter"] = {**args.get("arbiter", {}), "starvation_s": 0}
    with pytest.raises(ConfigError) as e:
        parse_config(args)
    assert "arbiter.starvation_s" in str(e.value)


def test_up_builds_the_runtime_envs_the_arbiter_will_start_models_in():
    from gpu_orchestrator.serve.warm import model_envs

    args = shipped_args()
    args["profile"] = "demo"
    starts_at_zero, envs = model_envs(args, ROOT)
    assert starts_at_zero  # the demo's arbiter: every model starts with no replica
    assert set(envs) == {"sdxl", "zimage", "whisper", "llm"}  # echo needs nothing beyond the base install
    assert envs["sdxl"] == envs["zimage"]  # one virtualenv for both image models (Ray keys it by packages)
    assert set(envs["llm"]) == {"pip"} and "vllm" not in str(envs["llm"])  # the demo's env, no env_vars
    assert model_envs({**args, "demo": {}}, ROOT)[0] is False  # arbiter off: the deploy itself builds them
