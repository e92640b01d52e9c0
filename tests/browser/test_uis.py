"""Each UI in a real browser, served by Ray Serve next to the demo orchestrator: what a user does
(fill the form, click) and what they see (the image of the size they asked for, the transcript's
segments, chat text streaming then stopping, the admin page listing their job and a model changing
state). Locators are the UIs' elem_ids. The tab fixture also fails a test whose page asked any host
but the stack's own."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.helpers import wait_for, wait_status
from tests.serve.test_whisper import tone_wav

pytestmark = [pytest.mark.serve, pytest.mark.timeout(600)]

# Gradio 6's Dataframe draws its visible rows as [role=row] of [role=gridcell] (a hidden <table>
# only sizes the columns).
ROWS_JS = """sel => Array.from(document.querySelectorAll(sel + ' [role=row]'))
    .map(r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.textContent.trim())).filter(r => r.length)"""
# Every text the progress element showed, as the page changed (polling could miss a fast step).
WATCH_JS = """() => { window.__seen = []; const el = document.querySelector('#progress');
    new MutationObserver(() => { const t = el.querySelector('.progress-text'); if (t) window.__seen.push(t.innerText); })
    .observe(el, {subtree: true, childList: true, characterData: true}); }"""


# The length of the assistant's latest reply each time the chat changes (set before sending).
WATCH_CHAT_JS = """() => { window.__lengths = []; const el = document.querySelector('#chatbot');
    new MutationObserver(() => { const bots = el.querySelectorAll('[data-testid="bot"]');
        if (bots.length) window.__lengths.push(bots[bots.length - 1].innerText.length); })
    .observe(el, {subtree: true, childList: true, characterData: true}); }"""



def model_defaults_shown(page, steps_default: int) -> None:
    """The chosen model's defaults and limits have come from the router (the fields show them): what
    a user types after this stays."""
    # The page asks the router on load (GET /v1/apps): on a busy 2-core box that can take longer
    # than expect()'s 5 s default, so wait as long as the page's own timeout.
    expect(page.locator("#steps")).to_contain_text(f"default {steps_default},", timeout=60_000)
    expect(page.locator("#steps input")).to_have_value(str(steps_default), timeout=60_000)


def type_number(page, elem: str, value: str) -> None:
    """Type into a Number input and leave it, as a user does (Gradio may apply the value on blur)."""
    box = page.locator(f"{elem} input")
    box.fill(value)
    box.press("Tab")
    expect(box).to_have_value(value)


# Two animation frames: the second starts after every callback the first ran (and their promises).
NEXT_FRAMES_JS = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def open_accordion(page, label: str, inside: str) -> None:
    """Open a closed gr.Accordion as a user does: click it, then wait until what it holds is shown
    and settled. Gradio 6 renders a closed accordion's children when it first opens and applies
    their initial values one animation frame after they appear (render_previously_invisible_children
    in its core.js): a value typed into one within that frame is reset. On a loaded machine that
    frame can come late, which made typing right after the click fail now and then."""
    page.get_by_text(label).click()
    page.locator(inside).wait_for(state="visible")
    page.evaluate(NEXT_FRAMES_JS)


# The first gallery image's decoded size, or null while it is still loading (the <img> appears
# before its bytes arrive; naturalWidth is 0 until then).
IMAGE_SIZE_JS = """() => { const i = document.querySelector('#gallery img');
    return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null; }"""


def gallery_image_size(page, want: list[int], timeout_s: float = 60) -> list[int] | None:
    """The size of the image the gallery shows once it has loaded, waiting (up to timeout_s) for it
    to be `want`, since the previous image may still be on screen for a moment."""
    seen = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = page.evaluate(IMAGE_SIZE_JS)
        if seen == want:
            break
        time.sleep(0.2)
    return seen


def rows(page, elem: str) -> list[list[str]]:
    return page.evaluate(ROWS_JS, elem)


def admin_shows(page, fn, what: str, timeout_s: float = 60):
    """wait_for on the admin page; a timeout says what the page showed (its error line, its tables)."""
    try:
        return wait_for(fn, what, timeout_s)
    except AssertionError as e:
        seen = {t: rows(page, f"#{t}")[:8] for t in ("jobs", "models", "queues")}
        raise AssertionError(f"{e}; the page's error line: {page.locator('#error').inner_text()!r}; it shows {seen}") from None


def test_images_generates_an_image_of_the_requested_size(tab, http):
    page = tab.page
    tab.open("/ui/images/")
    model_defaults_shown(page, 30)  # SDXL's, as the API has them (1024 x 1024, 30 steps)
    assert page.locator("#width input").input_value() == "1024"
    page.locator("#prompt textarea").fill("a red fox in the snow")
    type_number(page, "#width", "128")
    type_number(page, "#height", "64")
    type_number(page, "#steps", "6")
    page.locator("#progress .progress-text").wait_for()  # Gradio draws the page after "load"
    page.evaluate(WATCH_JS)
    page.locator("#generate").click()
    img = page.locator("#gallery img").first
    img.wait_for(timeout=180_000)
    assert gallery_image_size(page, [128, 64]) == [128, 64]
    info = page.locator("#job-info").inner_text()
    assert "succeeded" in info and "this cluster (sdxl)" in info and "untrained" in info
    seen = page.evaluate("() => window.__seen")
    assert any(s.startswith("step ") for s in seen) and seen[-1] == "succeeded", seen  # fed by the job's events
    # The job the page ran is the router's, with the form's values.
    job_id = info.split("job ", 1)[1].split()[0]
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["params"]["width"] == 128 and job["params"]["prompt"] == "a red fox in the snow"
    # Z-Image, chosen in the page, at its own size.
    page.locator("#model label", has_text="Z-Image Turbo").click()
    model_defaults_shown(page, 9)  # Z-Image's own: 9 steps, guidance 0
    assert page.locator("#guidance input").input_value() == "0"
    type_number(page, "#width", "96")
    type_number(page, "#height", "64")
    type_number(page, "#steps", "2")
    page.locator("#generate").click()
    wait_for(lambda: "zimage" in page.locator("#job-info").inner_text() and "succeeded" in page.locator("#job-info").inner_text(),
             "the Z-Image job succeeded", 180)
    assert gallery_image_size(page, [96, 64]) == [96, 64]
    tab.screenshot("ui-images")


def test_images_shows_the_routers_message_naming_the_field(tab, http):
    page = tab.page
    tab.open("/ui/images/")
    model_defaults_shown(page, 30)
    before = len(http.get("/v1/jobs", params={"app_id": "sdxl", "limit": 500}).json()["jobs"])
    page.locator("#generate").click()  # empty prompt
    err = page.locator("#error .error")
    err.wait_for()
    assert "prompt: required parameter is missing" in err.inner_text()
    page.locator("#prompt textarea").fill("a fox")
    type_number(page, "#width", "4096")
    page.locator("#generate").click()
    wait_for(lambda: "width:" in page.locator("#error").inner_text(), "the width error")
    text = page.locator("#error").inner_text()
    assert "2048" in text and "Traceback" not in text and "prompt" not in text
    assert len(http.get("/v1/jobs", params={"app_id": "sdxl", "limit": 500}).json()["jobs"]) == before  # nothing submitted
    tab.screenshot("ui-images-error")


def test_speech_transcribes_an_upload_with_segments_and_downloads(tab, tmp_path):
    page = tab.page
    clip = tmp_path / "tone.wav"
    clip.write_bytes(tone_wav(1.5))
    tab.open("/ui/speech/")
    page.locator("#audio input[type=file]").set_input_files(str(clip))
    page.locator("#language textarea").fill("en")
    page.locator("#transcribe").click()
    wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the transcription succeeded", 300)
    assert "language en" in page.locator("#job-info").inner_text()
    segs = wait_for(lambda: [r for r in rows(page, "#segments") if any(r)], "the segments table filled", 30)
    assert segs and all(r[0].startswith("00:00:") and r[1].startswith("00:00:") for r in segs), segs
    links = page.locator("#downloads a")
    hrefs = [links.nth(i).get_attribute("href") or "" for i in range(links.count())]
    assert any(h.endswith(".txt") for h in hrefs) and any(h.endswith(".srt") for h in hrefs), hrefs
    assert ".srt" in page.locator("#downloads").inner_text()  # the file's name, shown
    with page.expect_download() as dl:
        page.locator('#downloads a[href$=".srt"]').first.click()
    srt = open(dl.value.path()).read()
    assert srt.startswith("1\n00:00:") and " --> " in srt
    tab.screenshot("ui-speech")


def test_chat_streams_text_that_grows_then_stops_and_stop_cancels(tab, http):
    page = tab.page
    tab.open("/ui/chat/")
    page.locator("#system textarea").fill("You are terse.")
    type_number(page, "#max-tokens", "800")
    page.locator("#chatbot").scroll_into_view_if_needed()
    open_accordion(page, "More", "#min-tokens input")
    type_number(page, "#min-tokens", "800")  # the untrained model would often end at once
    page.locator("#message textarea").fill("hello there")
    page.locator("#chatbot").wait_for()
    page.evaluate(WATCH_CHAT_JS)
    page.locator("#send").click()
    # The page's last update of the reply comes with the job's end (one yield: the reply and the
    # "succeeded" line), so the text is final once the line shows it.
    wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the reply finished", 180)
    final = len(page.locator('#chatbot [data-testid="bot"]').last.inner_text())
    lengths = page.evaluate("() => window.__lengths")
    grew = sorted(set(lengths))
    assert final > 0 and len(grew) >= 3 and max(lengths) == final, f"text did not grow while streaming: {grew}"
    job_id = page.locator("#job-info").inner_text().split("job ", 1)[1].split()[0]
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["params"]["messages"][0] == {"role": "system", "content": "You are terse."}
    # What the page sent is what the user typed (the model may still end early: the assertion on the
    # model's min_tokens lives in tests/serve/test_llm.py).
    assert (job["params"]["max_tokens"], job["params"]["min_tokens"]) == (800, 800), job["params"]
    assert job["result"]["completion_tokens"] >= 3, job["result"]
    tab.screenshot("ui-chat")

    # A long reply, stopped: the job is cancelled and the text stops growing. (Under the test session's
    # 3 s leases on a loaded 2-core machine a demo reply has been seen to end early, long before its
    # min_tokens: then Stop had nothing left to stop, so the user asks again, once.)
    type_number(page, "#max-tokens", "4000")
    type_number(page, "#min-tokens", "4000")
    shown_id = lambda: page.locator("#job-info").inner_text().split("job ", 1)[-1].split()[0]  # noqa: E731
    reply = lambda: page.locator('#chatbot [data-testid="bot"]').last.inner_text()  # noqa: E731
    for attempt in range(2):
        before_id, before_text = shown_id(), reply()
        page.locator("#message textarea").fill("tell me everything")
        page.locator("#send").click()
        job_id = wait_for(lambda: shown_id() != before_id and shown_id(), "the next job shown")
        wait_for(lambda: reply() != before_text and len(reply()) > 10, "the reply streaming")
        page.locator("#stop").click()
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] in ("cancelled", "succeeded", "failed"),
                 "the job ended", 60)
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "cancelled":
            break
        assert attempt == 0, f"Stop never caught a running reply: {job}"
        print(f"the reply ended before Stop: {job['status']}, {job.get('result')}, attempts {job['attempts']}, "
              f"lost {job['lost_attempts']}, errors {job['errors']}")
        wait_for(lambda: "succeeded" in page.locator("#job-info").inner_text(), "the page showed it done", 30)
    # "[stopped]" is the page's last update of the reply: no text after Stop.
    wait_for(lambda: reply().endswith("[stopped]"), "the reply marked stopped", 30)
    assert http.get(f"/v1/jobs/{job_id}").json()["result"] is None


def test_admin_lists_the_job_just_run_charts_it_and_cancels_from_the_page(tab, http):
    page = tab.page
    done = http.post("/v1/jobs", json={"app_id": "echo", "params": {"message": "from the admin test"}}).json()["job_id"]
    slow = http.post("/v1/jobs", json={"app_id": "echo", "params": {"delay_s": 120}}).json()["job_id"]
    cloud = http.post("/v1/jobs", json={"app_id": "echo-cloud", "params": {"message": "to the cloud"}}).json()["job_id"]
    assert wait_status(http, cloud, {"succeeded", "failed"})["status"] == "succeeded"
    tab.open("/ui/admin/")
    admin_shows(page, lambda: any(r[1] == done and r[3] == "succeeded" for r in rows(page, "#jobs")),
                f"the finished job listed (the API says {http.get(f'/v1/jobs/{done}').json()['status']})")
    wait_for(lambda: any(r[0] == "echo" for r in rows(page, "#queues")), "echo's queue row")
    models = {r[0]: r for r in rows(page, "#models")}
    assert models["echo"][1] == "resident" and {"sdxl", "llm", "whisper", "zimage"} <= set(models)
    # Vega draws the chart (canvas or svg, class "marks") once it has data.
    wait_for(lambda: page.locator("#jobs-chart .marks").count() > 0, "the jobs-per-minute chart drawn", 30)
    # The last day's spend, local vs cloud: the line counts the cloud job just run; the chart is drawn.
    spend = lambda: re.search(r"local \$[\d.]+ \((\d+) jobs\), cloud \$[\d.]+ \((\d+) jobs\)",  # noqa: E731
                              page.locator("#costs").inner_text())
    wait_for(lambda: (m := spend()) and int(m.group(1)) >= 1 and int(m.group(2)) >= 1,
             "local and cloud jobs in the cost line", 30)
    wait_for(lambda: page.locator("#cost-chart .marks").count() > 0, "the cost chart drawn", 30)
    # The status filter: only running jobs (the slow one).
    page.locator("#filter-status input").click()
    page.get_by_role("option", name="running").click()
    wait_for(lambda: rows(page, "#jobs") and all(r[3] == "running" for r in rows(page, "#jobs")), "only running jobs")
    # Cancel the slow job by picking its row.
    cell = page.locator("#jobs [role=gridcell]", has_text=slow).first

    def picked() -> bool:
        if page.locator("#cancel-id textarea").input_value() == slow:
            return True
        cell.click()  # (again: a click that lands while the 2 s refresh redraws the table can be lost)
        return False
    wait_for(picked, "the picked job id", 60, every_s=2)
    page.locator("#cancel").click()
    wait_for(lambda: "cancelled" in page.locator("#cancel-result").inner_text(), "the cancel confirmed", 30)
    assert http.get(f"/v1/jobs/{slow}").json()["status"] == "cancelled"
    tab.screenshot("ui-admin")


def test_admin_shows_a_model_changing_state_and_the_arbiters_decisions(tab, orchestrator):
    page = tab.page
    arb = httpx.Client(base_url=orchestrator + "/arb", timeout=30)
    tab.open("/ui/admin-arb/")
    state = lambda: {r[0]: r[1] for r in rows(page, "#models")}.get("echo-c")  # noqa: E731
    wait_for(lambda: state() == "cold", "echo-c cold (idle models scale to zero)", 120)
    job = arb.post("/v1/jobs", json={"app_id": "c", "params": {"delay_s": 2}}).json()["job_id"]
    seen = [state()]

    def resident() -> bool:
        s = state()
        if s != seen[-1]:
            seen.append(s)
        return s == "resident"

    wait_for(resident, "echo-c resident after its job arrived", 120, every_s=0.1)
    assert seen[0] == "cold" and seen[-1] == "resident", seen
    wait_for(lambda: any("echo-c" in r[1] for r in rows(page, "#decisions")), "the arbiter's decision for echo-c", 30)
    gpus = rows(page, "#gpus")
    assert gpus and gpus[0][0] == "gpu0" and float(gpus[0][1]) == 24  # its size, as the arbiter counts it
    tab.screenshot("ui-admin-arbiter")
    # A swap: echo-a (16 GB) does not fit beside echo-c (12 GB) on the 24 GB GPU. Its job waits while
    # echo-c finishes, is evicted for it, and echo-a loads; its row says what it waits for.
    swap_job = arb.post("/v1/jobs", json={"app_id": "a", "params": {"delay_s": 1}}).json()["job_id"]
    states = lambda: {r[0]: r[1] for r in rows(page, "#models")}  # noqa: E731

    def mid_swap() -> bool:
        s = states()
        return s.get("echo-a") == "loading" and s.get("echo-c") in ("stopping", "cold") and any(
            "evict echo-c" in r[1] and "for echo-a" in r[1] for r in rows(page, "#decisions"))

    wait_for(mid_swap, "echo-c evicted for echo-a, which loads", 120, every_s=0.1)
    tab.screenshot("ui-admin-swap")  # the README's first picture
    waits = [r[3] for r in rows(page, "#jobs") if r[1] == swap_job]
    assert waits and waits[0].startswith("queued: waiting for echo-a"), (waits, rows(page, "#jobs")[:3])
    wait_for(lambda: arb.get(f"/v1/jobs/{swap_job}").json()["status"] == "succeeded", "the job after the swap done", 120)
    assert arb.get(f"/v1/jobs/{job}").json()["status"] == "succeeded"
    arb.close()


def test_api_docs_render_with_no_internet(tab):
    """/docs is Swagger UI from the package (FastAPI's default loads it from a CDN): it renders every
    route, and the tab fixture checks the page asked no host outside the stack."""
    tab.open("/docs")
    tab.page.wait_for_selector(".opblock-summary-path")
    paths = {p.strip().replace("\u200b", "") for p in tab.page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/admin/prune"} <= paths, paths
    tab.screenshot("api-docs")
