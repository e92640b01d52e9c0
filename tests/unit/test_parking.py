"""The warm tier's replica side (models/base.py park/wake, models/parking.py), in-process: a parked
model gives the same outputs once woken, a job wakes a parked model instead of failing, a park or
wake that fails half-way leaves a cold model that the next job loads afresh (never half a model),
and a replica with a job is not parked."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
import torch

from gpu_orchestrator.models.base import JobContext, ModelDeployment
from gpu_orchestrator.models.echo import Echo
from gpu_orchestrator.models.parking import modules_of, tensors_gb, to_host


def run(coro):
    return asyncio.run(coro)


class Tiny(ModelDeployment):
    """A real torch module tree moved by models/parking.py, as the real models move theirs."""

    model_name = "tiny"

    def __init__(self, fail_wake: bool = False):
        self.loads, self.fail_wake = 0, fail_wake
        super().__init__()

    def load(self) -> None:
        torch.manual_seed(0)
        self.loads += 1
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.LayerNorm(256),
                                       torch.nn.Linear(256, 8)).eval()

    device = "cpu"

    def parked_modules(self) -> list[Any]:
        return modules_of(self.net)

    def onload(self) -> None:
        if self.fail_wake:
            raise RuntimeError("CUDA out of memory (simulated)")
        super().onload()

    def unload(self) -> None:
        self.net = None

    def infer(self, params: dict[str, Any], ctx: JobContext) -> Any:
        x = torch.arange(64, dtype=torch.float32).reshape(1, 64) / params.get("scale", 64.0)
        with torch.no_grad():
            return self.net(x).tolist()


def test_a_parked_model_gives_the_same_outputs_once_woken():
    m = Tiny()
    before = run(m.run("j1", {}))
    parked = run(m.park())
    assert parked["parked"] and m.state == "warm" and m.info()["state"] == "warm"
    assert m.info()["host_held_gb"] == parked["host_gb"] > 0
    assert run(m.wake())["state"] == "resident" and m.info()["wake_time_s"] is not None
    assert run(m.run("j2", {})) == before and m.loads == 1  # woken, not loaded again


def test_a_job_wakes_a_parked_model_instead_of_failing():
    m = Tiny()
    before = run(m.run("j1", {}))
    run(m.park())
    assert run(m.run("j2", {})) == before
    assert m.state == "resident" and m.loads == 1 and m.info()["host_held_gb"] == 0.0


def test_a_failed_wake_leaves_a_cold_model_that_the_next_job_loads_afresh():
    m = Tiny(fail_wake=True)
    before = run(m.run("j1", {}))
    run(m.park())
    run(m.wake())
    assert m.state == "cold" and m.net is None and m.info()["host_held_gb"] == 0.0
    assert run(m.run("j2", {})) == before  # a cold load, from scratch
    assert m.state == "resident" and m.loads == 2


def test_a_park_that_fails_half_way_leaves_a_cold_model():
    class HalfPark(Tiny):
        def offload(self) -> float:
            self.net[0].to("meta")  # half moved, then the failure
            raise RuntimeError("cannot lock host memory")

    m = HalfPark()
    before = run(m.run("j1", {}))
    out = run(m.park())
    assert not out["parked"] and "cannot lock host memory" in out["why"] and m.state == "cold"
    assert run(m.run("j2", {})) == before and m.loads == 2


def test_a_replica_with_a_job_is_not_parked():
    m = Echo()

    async def go():
        job = asyncio.ensure_future(m.run("j1", {"delay_s": 0.5}))
        await asyncio.sleep(0.1)
        refused = await m.park()
        await job
        return refused, await m.park()

    refused, parked = run(go())
    assert not refused["parked"] and refused["why"] == "1 job(s) here" and refused["state"] == "resident"
    assert parked["parked"] and m.state == "warm"


def test_a_job_sent_while_the_model_parks_waits_for_the_wake():
    class SlowPark(Echo):
        def offload(self) -> float:
            time.sleep(0.3)
            return super().offload()

    m = SlowPark(warm_load_time_s=0.2)

    async def go():
        park = asyncio.ensure_future(m.park())
        await asyncio.sleep(0)  # the park has begun (state parking)
        assert m.state == "parking"
        out = await m.run("j1", {"message": "hi"})
        return await park, out

    parked, out = run(go())
    assert parked["parked"] and out["echo"] == {"message": "hi"} and m.state == "resident"
    assert m.wake_time_s is not None and m.wake_time_s >= 0.2


def test_a_model_without_park_support_says_so_and_stays_resident():
    class Plain(ModelDeployment):
        def infer(self, params, ctx):
            return 1

    m = Plain()
    out = run(m.park())
    assert out.items() >= {"parked": False, "state": "resident", "unsupported": True,
                           "why": "model cannot park (it reloads from disk instead)"}.items()
    assert out["replica_id"] and out["at"] > 0  # matched with this replica's heartbeats by the arbiter


def test_pinning_falls_back_to_pageable_memory_without_cuda():
    net = torch.nn.Linear(4, 4)
    assert to_host([net]) is False and net.weight.device.type == "cpu"
    assert tensors_gb([net]) == (16 + 4) * 4 / 2**30


def test_workers_show_a_parked_model_as_warm_with_its_host_memory():
    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.service.fleet import models_view

    cfg = parse_config({"models": {"echo": {"impl": "deployments.echo:Echo", "vram_gb": 2}},
                        "apps": [{"id": "echo", "deployment": "echo"}]})
    m = Echo(vram_gb=2)
    resident = models_view(cfg, [m.info()], {"echo": {"RUNNING": 1}}, {})[0]
    run(m.park())
    warm = models_view(cfg, [m.info()], {"echo": {"RUNNING": 1}}, {})[0]
    assert (resident["state"], resident["host_held_gb"]) == ("resident", 0.0)
    assert (warm["state"], warm["host_held_gb"]) == ("warm", 2.0)
    assert models_view(cfg, [], {"echo": {}}, {})[0]["state"] == "cold"


def test_gpu_orch_workers_shows_the_parked_model_and_its_wake():
    from gpu_orchestrator.cli.admin import _replica_line, _vram
    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.service.fleet import models_view

    cfg = parse_config({"models": {"echo": {"impl": "deployments.echo:Echo", "vram_gb": 2}},
                        "apps": [{"id": "echo", "deployment": "echo"}]})
    m = Echo(vram_gb=2, warm_load_time_s=0.01)
    run(m.park())
    (warm,) = models_view(cfg, [m.info()], {"echo": {"RUNNING": 1}}, {})
    assert _vram(warm) == "VRAM - of 2 GB held, 2.0 GB parked in host memory"
    run(m.wake())
    (woke,) = models_view(cfg, [m.info()], {"echo": {"RUNNING": 1}}, {})
    assert _vram(woke) == "VRAM - of 2 GB held" and re.search(r" wake=\d+\.\d\ds ", _replica_line(woke["replicas"][0]))


def test_no_park_while_the_work_of_a_timed_out_job_still_runs():
    class Slow(Tiny):
        def infer(self, params, ctx):
            time.sleep(0.5)  # a thread: the timeout ends the job, not the work
            return super().infer(params, ctx)

    m = Slow()

    async def go():
        from gpu_orchestrator.core.model_errors import JobTimeout

        try:
            await m.run("j1", {}, timeout_s=0.05)
        except JobTimeout:
            pass
        refused = await m.park()
        while m._live:
            await asyncio.sleep(0.02)
        return refused, await m.park()

    refused, parked = run(go())
    assert not refused["parked"] and refused["why"] == "1 job(s) here"
    assert parked["parked"]


def test_a_job_that_wakes_before_the_park_took_the_lock_waits_for_the_park_then_wakes():
    m = Tiny()
    before = run(m.run("j1", {}))

    async def go():
        m.state = "parking"  # park() has begun on the loop; its thread has not run yet
        job = asyncio.ensure_future(m.run("j2", {}))
        await asyncio.sleep(0.2)
        assert not job.done() and m.state == "parking"
        await asyncio.to_thread(m._park)
        return await job

    assert run(go()) == before and m.state == "resident" and m.loads == 1


def test_a_cuda_error_in_a_wake_has_serve_replace_the_replica():
    class Poisoned(Tiny):
        def onload(self) -> None:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    m = Poisoned()
    run(m.park())
    run(m.wake())
    assert m.state == "cold" and "CUDA error" in m.fatal_error
    with pytest.raises(RuntimeError, match="unusable"):
        m.check_health()
