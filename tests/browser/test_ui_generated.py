"""Apps made by `gpu-orch new-app NAME --task image|audio|chat` show up in the UI of their task with
no UI code edited, and a job from the page runs on them: the session's orchestrator has ui_pic,
ui_hear and ui_talk exactly as new-app writes them (tests/browser/generated_apps.py); each page
lists the router's apps of its task (GET /v1/apps) when it loads. The admin page lists their models."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_uis import admin_shows, gallery_image_size, model_defaults_shown, rows, type_number
from tests.helpers import wait_for
from tests.serve.test_whisper import tone_wav

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]


def offered(page, app_id: str, default: str) -> None:
    """The page lists the generated app (from the router), and its built-in default is still chosen."""
    # As long as the page's own timeout (60 s): the list comes from the router as the page loads,
    # which a loaded 2-core box took more than expect()'s 5 s default over.
    expect(page.locator(f'#model input[value="{app_id}"]')).to_have_count(1, timeout=60_000)
    expect(page.locator(f'#model input[value="{default}"]')).to_have_attribute("aria-checked", "true", timeout=60_000)
    assert "untrained" in page.locator("#model label", has_text=app_id).inner_text()  # its name from the router


def choose(page, app_id: str) -> None:
    page.locator("#model label", has_text=app_id).click()
    expect(page.locator(f'#model input[value="{app_id}"]')).to_have_attribute("aria-checked", "true")


def job_of(page, http) -> dict:
    return http.get(f"/v1/jobs/{page.locator('#job-info').inner_text().split('job ', 1)[1].split()[0]}").json()


def test_a_generated_image_app_is_a_model_choice_and_generates(tab, http):
    page = tab.page
    tab.open("/ui/images/")
    offered(page, "ui_pic", "sdxl")
    assert page.locator('#model input[value="zimage"]').count() == 1  # the configured ones stay
    model_defaults_shown(page, 30)  # SDXL's
    choose(page, "ui_pic")
    model_defaults_shown(page, 4)  # ui_pic's own (new-app's image defaults: 512 x 512, 4 steps)
    assert page.locator("#width input").input_value() == "512"
    page.locator("#prompt textarea").fill("a generated fox")
    type_number(page, "#width", "64")
    type_number(page, "#height", "64")
    type_number(page, "#steps", "2")
    page.locator("#generate").click()
    wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the ui_pic job succeeded", 120)
    assert "this cluster (ui_pic)" in page.locator("#job-info").inner_text()
    assert gallery_image_size(page, [64, 64]) == [64, 64]
    job = job_of(page, http)
    assert job["app_id"] == "ui_pic" and job["params"]["num_inference_steps"] == 2


def test_a_generated_audio_app_is_a_speech_model_choice_and_transcribes(tab, http, tmp_path):
    page = tab.page
    clip = tmp_path / "tone.wav"
    clip.write_bytes(tone_wav(1.5))
    tab.open("/ui/speech/")
    offered(page, "ui_hear", "transcribe")
    choose(page, "ui_hear")
    page.locator("#audio input[type=file]").set_input_files(str(clip))
    page.locator("#transcribe").click()
    wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the ui_hear job succeeded", 120)
    assert "this cluster (ui_hear)" in page.locator("#job-info").inner_text()
    # The demo model's 1 s windows, as the page's segments table shows them.
    segs = wait_for(lambda: [r for r in rows(page, "#segments") if any(r)], "the segments table filled", 30)
    assert len(segs) == 2, segs
    assert job_of(page, http)["app_id"] == "ui_hear"


def test_a_generated_chat_app_is_in_the_chat_model_list_and_replies(tab, http):
    page = tab.page
    tab.open("/ui/chat/")
    offered(page, "ui_talk", "chat")
    expect(page.locator("#max-tokens")).to_contain_text("default 512,")  # the chat app's limits, as hints
    choose(page, "ui_talk")
    expect(page.locator("#max-tokens")).to_contain_text("default 128,")  # ui_talk's own (new-app's chat defaults)
    expect(page.locator("#max-tokens input")).to_have_value("128")
    type_number(page, "#max-tokens", "6")
    page.locator("#message textarea").fill("hello there")
    page.locator("#send").click()
    wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the ui_talk reply finished", 120)
    assert "this cluster (ui_talk)" in page.locator("#job-info").inner_text()
    job = job_of(page, http)
    # The reply's bubble fills as the page renders it (a beat after the job's status line).
    wait_for(lambda: page.locator('#chatbot [data-testid="bot"]').last.inner_text().strip(),
             f"the reply shown (the job's text: {job['result'].get('text')!r})", 30)
    assert job["app_id"] == "ui_talk" and job["params"]["max_tokens"] == 6 and job["result"]["completion_tokens"] >= 1


def test_the_admin_page_lists_the_generated_models_and_apps(tab):
    page = tab.page
    tab.open("/ui/admin/")
    names = {"ui_pic", "ui_hear", "ui_talk"}
    admin_shows(page, lambda: names <= {r[0] for r in rows(page, "#models")}, "the generated models listed")
    wait_for(lambda: names <= {r[0] for r in rows(page, "#queues")}, "the generated apps' queues listed", 30)
