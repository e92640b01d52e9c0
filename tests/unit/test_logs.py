"""One job followed through the logs: with log_format json every line about a job, the router's
(dispatcher) and the model replica's, is a JSON object carrying its job_id and attempt."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from gpu_orchestrator import logs
from gpu_orchestrator.core.model_errors import ModelError
from gpu_orchestrator.models.base import JobContext, ModelDeployment
from tests.unit.test_dispatcher import FakeBackend, Rig, settled, stop


@pytest.fixture
def json_logs():
    """Call it to send our loggers' records, as JSON lines, to a buffer; returns their reader."""
    handlers = []

    def start():
        buf = io.StringIO()
        handlers.append(logs.configure("json", component="test", stream=buf))
        return lambda: [json.loads(x) for x in buf.getvalue().splitlines()]

    yield start
    for h in handlers:
        logging.getLogger(logs.ROOT).removeHandler(h)


class Steps(ModelDeployment):
    model_name = "steps"

    async def infer(self, params, ctx: JobContext):
        logging.getLogger("gpu_orchestrator.models.steps").info("step %d", 1)
        return {"ok": True}


def test_json_lines_carry_the_job_of_the_task_that_logs(json_logs):
    lines = json_logs()
    log = logging.getLogger("gpu_orchestrator.test")

    async def work(jid, n):
        logs.set_job(jid, n)
        log.info("working")

    async def go():
        log.info("before any job")
        await asyncio.gather(work("job-a", 1), work("job-b", 2))  # tasks: each its own job
        log.warning("about another job", extra={"job_id": "job-c"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    asyncio.run(go())
    got = lines()
    assert [(r["message"], r.get("job_id"), r.get("attempt")) for r in got] == [
        ("before any job", None, None), ("working", "job-a", 1), ("working", "job-b", 2),
        ("about another job", "job-c", None), ("failed", None, None)]
    assert got[0]["component"] == "test" and got[0]["logger"] == "gpu_orchestrator.test" and got[0]["level"] == "INFO"
    assert "ValueError: boom" in got[-1]["exc"]


def test_a_job_is_followed_from_the_dispatcher_into_the_model_replica(json_logs, monkeypatch):
    monkeypatch.setenv("GPU_ORCH_LOG_FORMAT", "json")
    model = Steps()  # a replica configures its logs from the environment the router's config set
    assert isinstance(logging.getLogger(logs.ROOT).handlers[-1].formatter, logs.JsonFormatter)
    lines = json_logs()

    class ReplicaBackend(FakeBackend):
        """The dispatcher's backend calling the model class as its replica would."""

        def run(self, job, attempt, *, timeout_s, queue_timeout_s):
            run = super().run(job, attempt, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)

            async def call():
                try:
                    run.succeed(await model.run(str(job.id), job.params, attempt, timeout_s=timeout_s))
                except ModelError as e:
                    run.fail(e)

            asyncio.get_running_loop().create_task(call())
            return run

    rig = Rig(ReplicaBackend())

    async def go():
        job_id = rig.submit()
        rig.d.start()
        await settled(rig, job_id)
        await stop(rig)
        return str(job_id)

    job_id = asyncio.run(go())
    mine = [(r["logger"], r["message"]) for r in lines() if r.get("job_id") == job_id]
    assert ("gpu_orchestrator.models.steps", "step 1") in mine  # in the model replica
    assert any(lg == "gpu_orchestrator.models" and m.startswith("attempt 1 done in") for lg, m in mine)
    assert any(lg == "gpu_orchestrator.dispatcher" and m.startswith("succeeded on local:m") for lg, m in mine)
    assert all(r.get("attempt") == 1 for r in lines() if r.get("job_id") == job_id)


def test_text_lines_name_the_job():
    buf = io.StringIO()
    handler = logs.configure("text", stream=buf)
    try:
        async def go():
            logs.set_job("job-t", 3)
            logging.getLogger("gpu_orchestrator.test").info("hello")

        asyncio.run(go())
    finally:
        logging.getLogger(logs.ROOT).removeHandler(handler)
    assert buf.getvalue().rstrip().endswith("INFO gpu_orchestrator.test [job job-t]: hello")


def test_the_configs_log_format_reaches_every_model_replica():
    import yaml

    from pathlib import Path

    from gpu_orchestrator.core.config import parse_config
    from gpu_orchestrator.serve.app import model_deployments

    root = Path(__file__).resolve().parents[2]
    args = next(a for a in yaml.safe_load((root / "serve_config.yaml").read_text())["applications"]
                if a["name"] == "orchestrator")["args"]
    for fmt, want in (("json", {"GPU_ORCH_LOG_FORMAT": "json"}), ("text", None)):
        deps = model_deployments(parse_config({**args, "log_format": fmt}), "redis://127.0.0.1:6379/0")
        for name, app in deps.items():
            env = app._bound_deployment.ray_actor_options.get("runtime_env", {}).get("env_vars")
            assert (env or {}).get("GPU_ORCH_LOG_FORMAT") == (want or {}).get("GPU_ORCH_LOG_FORMAT"), (name, env)
