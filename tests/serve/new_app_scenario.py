"""Runs apps made by `gpu-orch new-app` on a running Ray instance (tests/serve/test_new_app.py):

    cd PROJECT && PYTHONPATH=PROJECT python tests/serve/new_app_scenario.py SPEC_JSON

PROJECT is a project copy the apps were generated into. Its serve_config.yaml is read as `gpu-orch
up --demo` reads it (the generated models and apps, unchanged, in the demo profile) and deployed as
one more Serve application (its own router and database), built by the same
serve_apps.orchestrator:build_app, which imports the generated deployments/NAME.py from PROJECT
here. One job per app goes through the router's HTTP API to a succeeded result; the application is
deleted after. Prints `RESULT <json>` with what the test checks.

The replicas get the generated classes by value (cloudpickle), not by importing `deployments.NAME`:
in a user's checkout the module sits in its `deployments/` package, but here it is only in PROJECT,
and the test session's replicas (Serve's controller belongs to the pytest driver's job) have the
repository's directory first on sys.path, whose `deployments` package would shadow PROJECT's.

SPEC_JSON: {"address", "base", "app", "prefix", "database_url", "redis_url", "artifacts_url", "apps": {id: task}}
"""

from __future__ import annotations

import io
import json
import math
import struct
import sys
import time
import wave

import httpx
import yaml

from gpu_orchestrator.client import parse_sse

TERMINAL = {"succeeded", "failed", "cancelled"}


def tone_wav(seconds: float, rate: int = 16_000) -> bytes:
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate))) for i in range(int(seconds * rate)))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def params_for(task: str, http: httpx.Client) -> dict:
    if task == "image":
        return {"prompt": "a red fox", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 1}
    if task == "audio":
        r = http.post("/v1/artifacts", files={"file": ("tone.wav", tone_wav(1.5), "audio/wav")})
        r.raise_for_status()
        return {"audio": r.json()["artifact"]}
    if task == "text":
        return {"prompt": "hello world", "max_tokens": 6, "min_tokens": 6}
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "min_tokens": 6}


def wait(http: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job.get("status") in TERMINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


def progress_events(http: httpx.Client, job_id: str) -> list[dict]:
    """The job's SSE stream (replayed, then ended after the terminal status): its progress events."""
    with http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=30) as r:
        return [ev["data"] for ev in parse_sse(r.iter_lines()) if ev.get("event") == "progress"]


def main(spec: dict) -> dict:
    import ray
    from ray import serve

    import importlib

    ray.init(address=spec["address"], log_to_driver=False, logging_level="ERROR")
    from ray import cloudpickle
    from serve_apps.orchestrator import build_app

    cfg = yaml.safe_load(open("serve_config.yaml"))
    args = next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"]
    names = list(spec["apps"])
    # demo={}: the arbiter off (no virtual GPU), so each generated model stays loaded for its job.
    args.update(profile="demo", demo={}, database_url=spec["database_url"], redis_url=spec["redis_url"],
                artifacts_url=spec["artifacts_url"])
    args["models"] = {n: args["models"][n] for n in names}
    args["apps"] = [a for a in args["apps"] if a["id"] in names]
    args["router"].update(num_replicas=1, poll_interval_s=0.2)
    t0 = time.monotonic()
    app = build_app(args)  # imports deployments.NAME (from PROJECT: PYTHONPATH) for each model
    for name in names:
        cloudpickle.register_pickle_by_value(importlib.import_module(args["models"][name]["impl"].split(":")[0]))
    serve.run(app, name=spec["app"], route_prefix=spec["prefix"])
    result: dict = {"deploy_s": round(time.monotonic() - t0, 1), "jobs": {}, "progress": {}}
    try:
        with httpx.Client(base_url=spec["base"] + spec["prefix"], timeout=30) as http:
            ids = {}
            for app_id, task in spec["apps"].items():
                r = http.post("/v1/jobs", json={"app_id": app_id, "params": params_for(task, http)})
                r.raise_for_status()
                ids[app_id] = r.json()["job_id"]
            for app_id, job_id in ids.items():
                result["jobs"][app_id] = wait(http, job_id)
                result["progress"][app_id] = progress_events(http, job_id)
            result["apps"] = {a["id"]: a for a in http.get("/v1/apps").json()["apps"]}
            for app_id, task in spec["apps"].items():
                job = result["jobs"][app_id]
                if task == "image" and job["status"] == "succeeded":
                    png = http.get(job["result"]["images"][0]["url"])
                    result["png"] = png.status_code == 200 and png.content.startswith(b"\x89PNG")
                if task == "chat":  # a `task: chat` app is also on the OpenAI-compatible API
                    r = http.post("/v1/chat/completions", json={"model": app_id, "max_tokens": 4, "min_tokens": 4,
                                                                "messages": [{"role": "user", "content": "hi"}]})
                    result["openai"] = r.json() if r.status_code == 200 else {"status": r.status_code, "text": r.text}
        result["total_s"] = round(time.monotonic() - t0, 1)
    finally:
        serve.delete(spec["app"])
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1])), default=str), flush=True)
