"""Which apps each page offers, from the router's GET /v1/apps: the apps of its task, so an app that
`gpu-orch new-app NAME --task image|audio|chat` adds to the config shows up in its page (the image
page's model choice, the speech page's, the chat page's model list) with no UI change; when the list
cannot be read, or has no app of the task, the built-in choice stays."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpu_orchestrator.ops.scaffold_config import app_entry
from gradio_uis.chat import chat_models
from gradio_uis.choices import app_choices, find_app, offer
from gradio_uis.images import image_models
from gradio_uis.speech import speech_models

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"image": image_models, "audio": speech_models, "chat": chat_models}


def configured_apps() -> list[dict]:
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"]["apps"]


def test_a_page_offers_the_apps_of_its_task_in_the_configs_order():
    apps = [{"id": "a", "name": "Alpha", "task": "image"}, {"id": "t", "name": "T", "task": "chat"},
            {"id": "b", "task": "image"}, {"id": "g", "name": "G"}]
    assert app_choices(apps, "image") == [("Alpha", "a"), ("b", "b")]  # no name: its id
    assert app_choices(apps, "transcription") == []
    twins = [{"id": "x", "name": "Same", "task": "chat"}, {"id": "y", "name": "Same", "task": "chat"}]
    assert app_choices(twins, "chat") == [("Same [x]", "x"), ("Same [y]", "y")]
    assert find_app(apps, "t")["name"] == "T" and find_app(apps, "nope") is None and find_app(None, "a") is None


def test_the_value_stays_on_the_users_choice_else_the_default_else_the_first():
    builtin = [("Built in", "sdxl")]
    apps = [{"id": "zimage", "task": "image"}, {"id": "sdxl", "task": "image"}, {"id": "mine", "task": "image"}]
    assert offer(apps, "image", builtin, "sdxl").value == "sdxl"  # the default, though listed second
    assert offer(apps, "image", builtin, "sdxl", current="mine").value == "mine"  # picked before the list came
    assert offer(apps, "image", builtin, "sdxl", current="gone").value == "sdxl"
    assert offer(apps[2:], "image", builtin, "sdxl").value == "mine"  # no sdxl in this config: the first
    assert offer(apps, "image", builtin, "sdxl").note is None


def test_unreadable_or_empty_lists_keep_the_built_in_choice():
    builtin = [("Whisper", "transcribe")]
    down = offer(None, "transcription", builtin, "transcribe", current="transcribe")
    assert (down.choices, down.value, down.note) == (builtin, "transcribe", None)  # the page shows the router's error
    none = offer([{"id": "chat", "task": "chat"}], "transcription", builtin, "transcribe")
    assert (none.choices, none.value) == (builtin, "transcribe")
    assert "no app with task 'transcription'" in none.note and "gpu-orch new-app" in none.note


def test_the_shipped_config_gives_each_page_its_built_in_default():
    apps = configured_apps()
    assert [i for _, i in image_models(apps).choices] == ["sdxl", "zimage"] and image_models(apps).value == "sdxl"
    assert speech_models(apps).choices == [("Whisper large-v3", "transcribe")] and speech_models(apps).value == "transcribe"
    assert chat_models(apps).choices == [("Qwen2.5 7B Instruct", "chat")] and chat_models(apps).value == "chat"
    # With the router down, the same choices (the built-in ones) and defaults.
    for page, want in ((image_models, "sdxl"), (speech_models, "transcribe"), (chat_models, "chat")):
        assert page(None).value == want and want in [i for _, i in page(None).choices]


@pytest.mark.parametrize("task", ["image", "audio", "chat"])
def test_a_generated_app_shows_up_in_its_page_only(task):
    """The app entry new-app writes (scaffold_config.app_entry, what goes into serve_config.yaml) is offered
    by its task's page, after the built-in ones, and the default stays; the other pages ignore it."""
    name = f"my_{task}"
    entry = app_entry(name, task)
    apps = configured_apps() + [entry]
    for other, page in PAGES.items():
        o = page(apps)
        ids = [i for _, i in o.choices]
        if other == task:
            assert ids[-1] == name and (entry["name"], name) in o.choices, o.choices
            assert o.value == page(configured_apps()).value  # the built-in default is still chosen
            assert page(apps, current=name).value == name
        else:
            assert name not in ids
