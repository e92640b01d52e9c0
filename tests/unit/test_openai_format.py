"""The OpenAI formats that need no server: model ids, sizes, transcript formats, error reshaping."""

from __future__ import annotations

import pytest

from gpu_orchestrator.api import openai_format as oai
from gpu_orchestrator.api.openai_errors import is_openai_path, openai_error
from gpu_orchestrator.core.apps import AppSpec
from gpu_orchestrator.core.config import ConfigError, parse_config


def app(id, task, deployment, aliases=()):
    return AppSpec(id=id, task=task, deployment=deployment, aliases=list(aliases))


def test_model_ids_are_app_ids_aliases_and_an_unshared_model_name():
    apps = [app("chat", "chat", "llm"), app("transcribe", "transcription", "whisper", ["whisper-1"]),
            app("sdxl", "image", "sdxl"), app("sdxl-fast", "image", "sdxl"), app("echo", "generic", "echo")]
    own = {"llm": "Qwen/Qwen2.5-7B-Instruct", "whisper": "large-v3", "sdxl": "stabilityai/sdxl", "echo": None}
    idx = {k: a.id for k, a in oai.model_index(apps, own).items()}
    assert idx == {"chat": "chat", "transcribe": "transcribe", "sdxl": "sdxl", "sdxl-fast": "sdxl-fast",
                   "whisper-1": "transcribe", "Qwen/Qwen2.5-7B-Instruct": "chat", "large-v3": "transcribe"}
    # two apps on one model: its name names neither; a generic app has no OpenAI route


def test_an_alias_may_not_take_an_app_id_or_another_apps_alias():
    base = {"models": {"m": {"impl": "deployments.echo:Echo"}}}
    with pytest.raises(ConfigError, match="'b' is already an app id"):
        parse_config({**base, "apps": [{"id": "a", "deployment": "m", "aliases": ["b"]}, {"id": "b", "deployment": "m"}]})
    with pytest.raises(ConfigError, match="'x' is already an alias of 'a'"):
        parse_config({**base, "apps": [{"id": "a", "deployment": "m", "aliases": ["x"]},
                                       {"id": "b", "deployment": "m", "aliases": ["x"]}]})


def test_size_is_width_x_height():
    assert oai.parse_size("1024x768") == (1024, 768) and oai.parse_size("64X64") == (64, 64)
    for bad in ("1024", "axb", "1024x", "-1x5", "１x1"):
        with pytest.raises(ValueError):
            oai.parse_size(bad)


def test_transcripts_in_each_format():
    r = {"text": " a b", "segments": [{"id": 0, "start": 0, "end": 3661.5, "text": " a b"}], "language": "en",
         "audio_s": 3661.5}
    assert oai.transcript(r, "json") == ("application/json", {"text": " a b"})
    assert oai.transcript(r, "text") == ("text/plain", "a b\n")
    assert oai.transcript(r, "srt")[1] == "1\n00:00:00,000 --> 01:01:01,500\na b\n"
    assert oai.transcript(r, "vtt")[1] == "WEBVTT\n\n00:00:00.000 --> 01:01:01.500\na b\n"
    assert oai.transcript(r, "verbose_json", "translate")[1]["task"] == "translate"


def test_errors_take_openais_shape_and_status():
    ours = {"error": "invalid_params", "message": "max_tokens: too big", "fields": [{"field": "max_tokens", "message": "too big"}]}
    assert openai_error(422, ours) == (400, {"error": {"message": "max_tokens: too big", "type": "invalid_request_error",
                                                       "param": "max_tokens", "code": "invalid_params"}})
    assert openai_error(401, {"error": "unauthorized", "message": "no key"})[1]["error"]["type"] == "authentication_error"
    assert openai_error(503, {"error": "service_unavailable", "message": "x"}) == (
        503, {"error": {"message": "x", "type": "server_error", "param": None, "code": "service_unavailable"}})
    already = {"error": {"message": "m", "type": "t"}}
    assert openai_error(400, already) == (400, already)
    assert is_openai_path("/v1/chat/completions") and is_openai_path("/v1/audio/translations")
    assert not is_openai_path("/v1/jobs") and not is_openai_path("/v1/modelsx")
