from gpu_orchestrator.cli import _parse_params
from gpu_orchestrator.client import parse_sse


def test_sse_parser_skips_keepalives_and_splits_events():
    lines = ["id: 1-0", "event: status", 'data: {"status": "queued"}', "", ": keep-alive", "",
             "id: 2-0", "event: progress", 'data: {"step": 1}', ""]
    assert list(parse_sse(iter(lines))) == [
        {"id": "1-0", "event": "status", "data": {"status": "queued"}},
        {"id": "2-0", "event": "progress", "data": {"step": 1}},
    ]


def test_cli_params():
    assert _parse_params(("a=1", "b=hello world", "c=true", 'd=["x"]', "e=")) == {
        "a": "1", "b": "hello world", "c": True, "d": ["x"], "e": ""}
