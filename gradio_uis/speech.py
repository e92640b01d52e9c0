"""Speech to text (the router's transcription apps: Whisper, any `gpu-orch new-app --task audio`
adds): upload or record audio, pick language and task; the transcript with timestamped segments,
downloadable as text and SRT."""

from __future__ import annotations

from typing import Any, AsyncIterator

import gradio as gr

from gradio_uis.choices import Offer, choice_updates, offer
from gradio_uis.common import (CONCURRENCY, DELETE_CACHE, api_url, client, error_html, event_progress, explain, job_line,
                               output_dir, progress_html, standalone, sweep)
from gradio_uis.formats import segment_rows, to_srt, to_text

# The choice until the page has the router's speech apps (AppSpec.task "transcription"), and if it cannot.
APP_ID = "transcribe"
MODELS = [("Whisper large-v3", APP_ID)]
TASK = "transcription"


def speech_models(apps: list[dict[str, Any]] | None, current: str | None = None) -> Offer:
    """The page's model choice from GET /v1/apps (None: it could not be read)."""
    return offer(apps, TASK, MODELS, APP_ID, current)


def build(api: str | None = None) -> gr.Blocks:
    url = api_url(api)
    out_dir = output_dir("speech")

    async def transcribe(app_id, audio_path, language, task, request: gr.Request) -> AsyncIterator:
        # Outputs: error, progress, transcript, segments, downloads, job info.
        if not audio_path:
            yield error_html("audio: upload or record a clip first"), gr.skip(), "", [], None, ""
            return
        params = {"task": task}
        if language and language.strip():
            params["language"] = language.strip()
        async with client(url, request) as c:
            try:
                params["audio"] = await c.upload(audio_path)
                job = await c.submit(app_id or APP_ID, params)
            except Exception as e:
                yield error_html(explain(e)), progress_html(0, "not submitted"), "", [], None, ""
                return
            job_id = job["job_id"]
            yield "", progress_html(0, "queued"), "", [], None, job_line(job)
            try:
                async for ev in c.events(job_id):
                    shown = event_progress(ev)
                    if shown is not None:
                        yield gr.skip(), progress_html(*shown), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                job = await c.get(job_id)
            except Exception as e:
                yield error_html(explain(e)), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                return
        if job["status"] != "succeeded":
            yield (error_html(f"{job['status']}: {job.get('error') or ''}"), progress_html(None, job["status"]),
                   "", [], None, job_line(job))
            return
        res = job["result"]
        sweep(out_dir)
        txt, srt = out_dir / f"{job_id}.txt", out_dir / f"{job_id}.srt"
        txt.write_text(to_text(res))
        srt.write_text(to_srt(res.get("segments") or []))
        note = " · untrained demo model: the words are noise" if res.get("untrained") else ""
        yield ("", progress_html(1.0, "succeeded"), res.get("text", ""), segment_rows(res.get("segments") or []),
               [str(txt), str(srt)], job_line(job) + f" · language {res.get('language') or '?'}" + note)

    with gr.Blocks(delete_cache=DELETE_CACHE, title="GPU Orchestrator: speech to text") as demo:
        gr.Markdown("## Speech to text")
        with gr.Row():
            with gr.Column():
                model = gr.Radio(MODELS, value=APP_ID, label="Model", elem_id="model")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                language = gr.Textbox(label="Language (blank: detect)", placeholder="e.g. en", elem_id="language")
                task = gr.Radio(["transcribe", "translate"], value="transcribe", label="Task", elem_id="task")
                go = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            with gr.Column():
                error = gr.HTML(elem_id="error")
                progress = gr.HTML(progress_html(0, "idle"), elem_id="progress")
                transcript = gr.Textbox(label="Transcript", lines=4, max_lines=10, elem_id="transcript",
                                        interactive=False)
                segments = gr.Dataframe(headers=["start", "end", "text"], label="Segments", elem_id="segments",
                                        interactive=False, wrap=True, max_height=360,
                                        column_widths=["18%", "18%", "64%"])
                downloads = gr.File(label="Download (.txt, .srt)", file_count="multiple", elem_id="downloads",
                                    interactive=False)
                info = gr.Markdown(elem_id="job-info")

        async def load(app_id: str, request: gr.Request):
            """The router's speech apps as the model choice (an app added to its config shows up
            here). Unreadable: the built-in choice stays, and the page says why."""
            _, _, shown = await choice_updates(url, request, speech_models, app_id)
            return shown

        demo.load(load, model, [model, error], show_progress="hidden")
        go.click(transcribe, [model, audio, language, task], [error, progress, transcript, segments, downloads, info],
                 show_progress="hidden")
    return demo.queue(default_concurrency_limit=CONCURRENCY)


def main() -> None:
    standalone(build, "speech to text")


if __name__ == "__main__":
    main()
