"""Parameter validation and app specs: pure, milliseconds."""

import pytest

from gpu_orchestrator.core.apps import AppSpec, ParamsInvalid, validate_params


def app(**params):
    return AppSpec(id="img", deployment="sdxl", parameters=[dict(name=k, **v) for k, v in params.items()])


SDXL = app(
    prompt={"type": "string", "required": True, "max_length": 20},
    width={"type": "integer", "default": 1024, "minimum": 256, "maximum": 2048, "multiple_of": 8},
    guidance={"type": "number", "default": 7.5, "minimum": 0},
    hires={"type": "boolean", "default": False},
    sampler={"type": "enum", "choices": ["euler", "ddim"], "default": "euler"},
    image={"type": "file"},
)


def errors(params):
    with pytest.raises(ParamsInvalid) as e:
        validate_params(SDXL, params)
    return {err.field: err.message for err in e.value.errors}


def test_defaults_filled_and_values_kept():
    assert validate_params(SDXL, {"prompt": "cat"}) == {
        "prompt": "cat", "width": 1024, "guidance": 7.5, "hires": False, "sampler": "euler"}


def test_seed_numeric_strings_are_coerced():
    out = validate_params(SDXL, {"prompt": "cat", "width": "512", "guidance": "3.5", "hires": "true"})
    assert out["width"] == 512 and isinstance(out["width"], int)
    assert out["guidance"] == 3.5 and out["hires"] is True


def test_missing_required():
    assert errors({}) == {"params.prompt": "required parameter is missing"}


def test_wrong_types():
    e = errors({"prompt": 3, "width": "wide", "hires": "maybe", "guidance": True})
    assert set(e) == {"params.prompt", "params.width", "params.hires", "params.guidance"}
    assert "expected integer" in e["params.width"]


def test_ranges_multiple_and_length():
    e = errors({"prompt": "x" * 21, "width": 4096, "guidance": -1})
    assert "above the maximum 2048" in e["params.width"]
    assert "below the minimum 0" in e["params.guidance"]
    assert "max_length 20" in e["params.prompt"]
    assert "not a multiple of 8" in errors({"prompt": "a", "width": 1004})["params.width"]


def test_non_integral_float_for_integer():
    assert "expected integer" in errors({"prompt": "a", "width": 512.5})["params.width"]
    assert validate_params(SDXL, {"prompt": "a", "width": 512.0})["width"] == 512


def test_enum_and_unknown_params():
    e = errors({"prompt": "a", "sampler": "plms", "colour": "red"})
    assert "not one of ['euler', 'ddim']" in e["params.sampler"]
    assert "unknown parameter" in e["params.colour"]


def test_params_must_be_an_object():
    with pytest.raises(ParamsInvalid, match="params: expected an object"):
        validate_params(SDXL, ["a"])


def test_nan_and_inf_rejected():
    assert "expected number" in errors({"prompt": "a", "guidance": float("nan")})["params.guidance"]


def test_bad_specs_are_rejected_naming_the_problem():
    with pytest.raises(ValueError, match="needs 'choices'"):
        app(s={"type": "enum"})
    with pytest.raises(ValueError, match="minimum 5.0 > maximum 1.0"):
        app(n={"type": "integer", "minimum": 5, "maximum": 1})
    with pytest.raises(ValueError, match="default .*above the maximum"):
        app(n={"type": "integer", "maximum": 1, "default": 5})
    with pytest.raises(ValueError, match="duplicate parameter"):
        AppSpec(id="a", deployment="d", parameters=[{"name": "x"}, {"name": "x"}])
    with pytest.raises(ValueError, match="lowercase"):
        AppSpec(id="Bad App", deployment="d")


def test_messages_param():
    chat = AppSpec(id="chat", deployment="llm", parameters=[{"name": "messages", "type": "messages", "required": True}])
    ok = validate_params(chat, {"messages": [{"role": "user", "content": "hi", "name": "x"}]})
    assert ok["messages"] == [{"role": "user", "content": "hi"}]
    for bad, text in (([], "at least one message"), ("hi", "expected a list"), ([{"role": "robot", "content": "x"}], "[0] must be")):
        with pytest.raises(ParamsInvalid) as e:
            validate_params(chat, {"messages": bad})
        assert e.value.errors[0].field == "params.messages" and text in e.value.errors[0].message


def test_file_params_are_artifact_uris_with_accepted_formats():
    spec = AppSpec(id="stt", deployment="whisper",
                   parameters=[{"name": "audio", "type": "file", "required": True, "accept": [".wav", ".mp3"]}])
    assert validate_params(spec, {"audio": "artifact://uploads/1/a.WAV"})["audio"] == "artifact://uploads/1/a.WAV"
    for bad, text in (("http://x/a.wav", "expected an artifact URI"), ("artifact://uploads/1/a.txt", "unsupported format '.txt'")):
        with pytest.raises(ParamsInvalid) as e:
            validate_params(spec, {"audio": bad})
        assert e.value.errors[0].field == "params.audio" and text in e.value.errors[0].message
