"""ops/ingress.py: the environment a Ray head gets for its HTTP ingress."""

from __future__ import annotations

import itertools

import pytest

from gpu_orchestrator.ops.ingress import HAPROXY_PORTS, ingress_env


def test_haproxy_gets_the_switch_a_long_hard_stop_and_a_free_port_of_its_own_for_each_fixed_one():
    ports = itertools.chain([41000, 41000], itertools.count(41001))  # the OS may repeat a free port
    env = ingress_env("haproxy", environ={}, pick_port=lambda: next(ports))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "3600"
    assert [env[v] for v in HAPROXY_PORTS] == ["41000", "41001", "41002", "41003"]


def test_what_the_operator_set_is_kept():
    env = ingress_env("haproxy", environ={"RAY_SERVE_HAPROXY_STATS_PORT": "9999", "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "60"},
                      pick_port=itertools.count(40000).__next__)
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] == "9999" and env["RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S"] == "60"


def test_serve_turns_haproxy_off_even_when_the_environment_had_it_on_and_its_proxy_calls_replicas_over_grpc():
    assert ingress_env("serve", environ={"RAY_SERVE_ENABLE_HA_PROXY": "1"}) == {
        "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_PROXY_USE_GRPC": "1",
        # the proxy's channel takes an answer over gRPC's default 4 MiB (tests/serve/test_job_path.py sends one)
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 1024 * 1024)}
    assert ingress_env("serve", environ={"RAY_SERVE_PROXY_USE_GRPC": "0"})["RAY_SERVE_PROXY_USE_GRPC"] == "0"


def test_an_unknown_ingress_names_the_variable_and_the_choices():
    with pytest.raises(ValueError, match="GPU_ORCH_INGRESS must be one of haproxy, serve, not 'nginx'"):
        ingress_env("nginx", environ={})
