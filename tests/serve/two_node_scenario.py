"""Run as a script (its own Ray cluster, so it cannot share the test session's Ray instance):
two fake GPU nodes with different VRAM; prints JSON saying where each model's replica landed.

    python -m tests.serve.two_node_scenario DATABASE_URL REDIS_URL
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import httpx


def main(db: str, redis_url: str) -> None:
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    # Three "nodes" on one machine cannot each run an HAProxy on Serve's port (a session run with
    # GPU_ORCH_INGRESS=haproxy hands its environment down): Serve's proxy here, whatever the session's.
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    import ray
    from ray.cluster_utils import Cluster

    from gpu_orchestrator.serve.deploy import deploy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4})
    small = cluster.add_node(num_cpus=4, num_gpus=1, resources={"vram_gb": 24, "node_type:small": 1})
    big = cluster.add_node(num_cpus=4, num_gpus=1, resources={"vram_gb": 80, "node_type:big": 1})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    names = {small.node_id: "small", big.node_id: "big"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def model(vram, **kw):
        return {"impl": "deployments.echo:Echo", "num_cpus": 0.1, "num_gpus": 0.5, "vram_gb": vram, "load_s": 1, **kw}

    def app(i, dep):
        return {"id": i, "deployment": dep, "synthetic": True, "parameters": []}

    args = {
        "database_url": db, "redis_url": redis_url,
        "router": {"num_replicas": 1, "lease_s": 5, "poll_interval_s": 0.2},
        # No `gpus`: pools are discovered from the nodes (node_type:<name>, vram_gb resources).
        "arbiter": {"enabled": True, "idle_ttl_s": 300, "tick_s": 0.25, "vram_resource": "vram_gb"},
        "models": {"llm40": model(40), "whisper-pinned": model(4, pin="small"), "tiny": model(2)},
        "apps": [app("llm40", "llm40"), app("whisper", "whisper-pinned"), app("tiny", "tiny")],
    }
    deploy({"http_options": {"host": "127.0.0.1", "port": port}, "applications": [
        {"name": "orchestrator", "route_prefix": "/", "import_path": "serve_apps.orchestrator:build_app", "args": args,
         "autoscaling_policy": {"policy_function": "serve_apps.autoscaling:arbiter_policy"}}]})
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as c:
        ids = {a: c.post("/v1/jobs", json={"app_id": a, "params": {}}).json()["job_id"] for a in ("llm40", "whisper", "tiny")}
        deadline = time.monotonic() + 180
        while True:
            jobs = {a: c.get(f"/v1/jobs/{j}").json() for a, j in ids.items()}
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(jobs)
            time.sleep(0.25)
        # Heartbeats are written every 2 s: wait until each model's replica has reported.
        while True:
            workers = c.get("/v1/workers").json()
            if all(m["replicas"] for m in workers["models"]) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    out = {"status": {a: j["status"] for a, j in jobs.items()}, "nodes": {}, "pools": {}}
    for m in workers["models"]:
        out["nodes"][m["deployment"]] = sorted(names.get(r.get("node_id"), "head") for r in m["replicas"])
        out["pools"][m["deployment"]] = (m["arbiter"] or {}).get("placement")
    print("RESULT " + json.dumps(out))
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
