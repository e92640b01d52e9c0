"""The pure cloud core: provider input mapping, output shapes, routing decisions and costs,
checked against figures worked out by hand."""

from __future__ import annotations

import pytest

from gpu_orchestrator.core.cloud import (CloudTarget, Fallback, LocalOutlook, NotTaken, check_inputs, choose,
                                         local_wait_s, resolve, to_inputs, to_result)
from gpu_orchestrator.core.config import ConfigError, parse_config
from gpu_orchestrator.core.costs import CostsSpec, Pricing, estimate_cloud_cost, local_cost, modal_cost, replicate_cost

SDXL = CloudTarget(backend="replicate", model="stability-ai/sdxl")
COSTS = CostsSpec()


def test_sdxl_params_become_replicate_inputs():
    r = resolve(SDXL, "image")
    assert r.output == "images" and r.pricing.mode == "per_second" and r.pricing.hardware == "gpu-l40s"
    inputs = to_inputs(r, {"prompt": "a fox", "width": 512, "num_inference_steps": 20, "num_images": 2, "seed": 7})
    assert inputs == {"prompt": "a fox", "width": 512, "num_inference_steps": 20, "num_outputs": 2, "seed": 7}


def test_whisper_task_is_translated_to_a_flag():
    r = resolve(CloudTarget(backend="replicate", version="8099696689d249cf8b122d833c36ac3f75505c666a395ca40ef26f68e7d3d16e"),
                "transcription")
    assert r.output == "transcription"  # the preset found by its version
    assert to_inputs(r, {"audio": "artifact://u/1/a.wav", "task": "translate", "language": "de"}) == {
        "audio": "artifact://u/1/a.wav", "translate": True, "language": "de"}
    out = to_result(r, {"transcription": " hi", "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": " hi", "seek": 0}],
                        "detected_language": "english"}, {}, [])
    assert out["text"] == " hi" and out["segments"] == [{"id": 0, "start": 0.0, "end": 1.5, "text": " hi"}]
    assert out["language"] == "english"


def test_chat_messages_become_a_llama3_prompt_and_tokens_come_back():
    r = resolve(CloudTarget(backend="replicate", model="meta/meta-llama-3-8b-instruct"), "chat")
    inputs = to_inputs(r, {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                           "max_tokens": 16, "temperature": 0.5})
    assert inputs["system_prompt"] == "Be brief." and inputs["prompt_template"] == "{prompt}"
    assert "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" in inputs["prompt"]
    assert inputs["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert inputs["max_tokens"] == 16 and "messages" not in inputs
    out = to_result(r, ["Hel", "lo"], {"input_token_count": 12, "output_token_count": 2}, [])
    assert out["text"] == "Hello" and out["completion_tokens"] == 2 and out["prompt_tokens"] == 12


def test_a_param_the_provider_does_not_take_is_named():
    r = resolve(CloudTarget(backend="replicate", model="prunaai/z-image-turbo"), "image")
    defaults = {"num_images": 1}
    check_inputs(r, {"prompt": "x", "num_images": 1}, defaults)  # the default: nothing asked of it
    with pytest.raises(NotTaken) as e:
        check_inputs(r, {"prompt": "x", "num_images": 2, "negative_prompt": "blur"}, defaults)
    assert e.value.fields == ["params.num_images", "params.negative_prompt"]


def test_config_refuses_cloud_apps_without_a_target_and_busy_without_a_bound():
    base = {"models": {"m": {"impl": "x:Y"}}}
    with pytest.raises(ConfigError, match="needs cloud"):
        parse_config({**base, "apps": [{"id": "a", "kind": "replicate"}]})
    with pytest.raises(ConfigError, match="exactly one of model, version, deployment"):
        parse_config({**base, "apps": [{"id": "a", "kind": "replicate", "cloud": {"backend": "replicate"}}]})
    with pytest.raises(ConfigError, match="busy needs max_local_wait_s"):
        parse_config({**base, "apps": [{"id": "a", "deployment": "m", "fallback": {
            "backend": "replicate", "model": "o/n", "when": "busy"}}]})
    with pytest.raises(ConfigError, match="modal: set endpoint"):
        parse_config({**base, "apps": [{"id": "a", "kind": "modal", "cloud": {"backend": "modal"}}]})
    ok = parse_config({**base, "apps": [{"id": "a", "kind": "modal", "cloud": {
        "backend": "modal", "app": "gpu-orchestrator", "cls": "SDXL", "method": "generate", "gpu": "A10G"}}]})
    assert ok.apps[0].cloud.ref == "gpu-orchestrator/SDXL.generate"


def test_local_wait_counts_waves_of_work_and_a_load():
    assert local_wait_s(queued=0, running=0, slots=1, service_s=4, load_s=30, resident=True) == 0
    assert local_wait_s(queued=0, running=1, slots=1, service_s=4, load_s=30, resident=True) == 4
    assert local_wait_s(queued=3, running=1, slots=2, service_s=4, load_s=30, resident=True) == 8  # 3 ahead beyond 2 slots: 2 waves
    assert local_wait_s(queued=0, running=0, slots=1, service_s=4, load_s=30, resident=False) == 30


def test_choose_sends_a_job_to_the_cloud_only_for_a_reason_it_is_allowed():
    fb = Fallback(backend="replicate", model="o/n", when="busy", max_local_wait_s=10, max_cost_per_job=0.05)
    assert choose(fb, LocalOutlook(wait_s=5), available=True).backend is None
    r = choose(fb, LocalOutlook(wait_s=12), available=True, cost_estimate=0.01)
    assert r.backend == "replicate" and r.reason == "estimated local wait 12 s > max_local_wait_s 10 s"
    assert choose(fb, LocalOutlook(wait_s=12), available=False).backend is None  # no token: stays local
    assert choose(fb, LocalOutlook(wait_s=12), available=True, cost_estimate=0.06).backend is None  # too dear
    r = choose(fb, LocalOutlook(unplaceable="needs 30 GB, largest GPU 24 GB"), available=True)
    assert r.reason == "no local GPU can hold the model (needs 30 GB, largest GPU 24 GB)"
    unplaceable_only = Fallback(backend="replicate", model="o/n")
    assert choose(unplaceable_only, LocalOutlook(wait_s=1e6), available=True).backend is None
    assert choose(unplaceable_only, LocalOutlook(failing="no such checkpoint"), available=True).backend == "replicate"
    assert choose(Fallback(backend="replicate", model="o/n", when="never"), LocalOutlook(unplaceable="x"),
                  available=True).backend is None


def test_costs_by_hand():
    # Local: 10 s on half an L4 at $0.7992/GPU-hour = 5 GPU-s = $0.00111.
    gs, usd = local_cost(10.0, 0.5, "L4", COSTS)
    assert gs == 5.0 and usd == pytest.approx(5 * 0.7992 / 3600)
    # Replicate per second: 3.2 s on an L40S at $0.000975/s.
    assert replicate_cost(Pricing(hardware="gpu-l40s"), {"predict_time": 3.2}, 1, COSTS) == (3.2, pytest.approx(0.00312))
    # Per token: 1000 in at $0.05/M + 500 out at $0.25/M = $0.000175.
    p = Pricing(mode="per_token", per_input_token=0.05e-6, per_output_token=0.25e-6)
    assert replicate_cost(p, {"predict_time": 1, "input_token_count": 1000, "output_token_count": 500}, 0, COSTS)[1] == \
        pytest.approx(0.000175)
    assert replicate_cost(Pricing(mode="per_image", per_image=0.005), {}, 3, COSTS)[1] == pytest.approx(0.015)
    # Modal: 20 s on an A10G at $0.000306/s.
    assert modal_cost(20.0, "A10G", COSTS) == (20.0, pytest.approx(0.00612))
    assert estimate_cloud_cost("replicate", Pricing(hardware="gpu-t4"), None, 10, 1, 0, COSTS) == pytest.approx(0.00225)
    # Overridden tables win.
    mine = CostsSpec(local_per_gpu_hour={"RTX4090": 0.36}, local_gpu_type="RTX4090")
    assert local_cost(3600, 1, None, mine) == (3600, pytest.approx(0.36))


def test_routing_remembers_what_the_arbiter_found_unplaceable():
    from gpu_orchestrator.service.cloud.routing import CloudRouting

    cfg = parse_config({"models": {"big": {"impl": "x:Y", "vram_gb": 30}}, "apps": [
        {"id": "a", "deployment": "big", "fallback": {"backend": "replicate", "model": "o/n"}}]})
    says = {"big": "cannot place big: needs 30 GB, largest allowed GPU has 24 GB"}
    routing = CloudRouting(cfg, {"replicate": None}, refuse=lambda m: says.get(m))
    app = cfg.app("a")
    assert routing.route(app, {}).backend == "replicate"
    says.clear()  # its queue emptied: the arbiter no longer mentions it
    r = routing.route(app, {})
    assert r.backend == "replicate" and "needs 30 GB" in r.reason  # still known unplaceable
    routing.UNPLACEABLE_MEMORY_S = 0.0  # after the memory: the next job checks again, locally
    assert routing.route(app, {}).backend is None
    assert CloudRouting(cfg, {"replicate": "no token"}, refuse=lambda m: "x").route(app, {}).backend is None


def test_a_burst_of_submits_between_two_queue_reads_sees_its_own_queue_grow():
    from gpu_orchestrator.service.cloud.routing import CloudRouting
    from gpu_orchestrator.store.base import AppQueueStats

    cfg = parse_config({"models": {"m": {"impl": "x:Y", "load_s": 5}}, "apps": [
        {"id": "a", "deployment": "m", "max_in_flight": 2,
         "fallback": {"backend": "replicate", "model": "o/n", "when": "busy", "max_local_wait_s": 15, "service_s": 10}}]})
    routing = CloudRouting(cfg, {"replicate": None}, resident=lambda m: True)
    routing.stats = {"a": AppQueueStats("a", 0, 0, None, None)}
    app, routes = cfg.app("a"), []
    for _ in range(6):  # what JobService does per submit: route, then count a local one
        r = routing.route(app, {})
        routes.append(r.backend)
        if r.backend is None:
            routing.queued_locally("a")
    # Two slots of 10 s: the 3rd and 4th wait one wave (10 s <= 15), the 5th would wait two (20 s).
    assert routes == [None, None, None, None, "replicate", "replicate"]
    routing.stats = {"a": AppQueueStats("a", 0, 0, None, None)}  # a fresh read: the queue drained meanwhile
    assert routing.route(app, {}).backend is None
