"""Text to image: the router's image apps (SDXL, Z-Image, any `gpu-orch new-app --task image`
adds), submit, a live progress bar from the job's event stream, a gallery of the PNGs with
downloads, and where the job ran."""

from __future__ import annotations

from typing import Any, AsyncIterator

import gradio as gr

from gradio_uis.choices import Offer, choice_updates, field_updates, find_app, offer, read_apps
from gradio_uis.common import (CONCURRENCY, DELETE_CACHE, api_url, client, error_html, event_progress, explain, job_line,
                               output_dir, progress_html, standalone, sweep, typed_int)

# The choice until the page has the router's image apps (AppSpec.task "image"), and if it cannot.
MODELS = [("Stable Diffusion XL", "sdxl"), ("Z-Image Turbo", "zimage")]
DEFAULT = "sdxl"
TASK = "image"


def image_models(apps: list[dict[str, Any]] | None, current: str | None = None) -> Offer:
    """The page's model choice from GET /v1/apps (None: it could not be read)."""
    return offer(apps, TASK, MODELS, DEFAULT, current)


def image_params(prompt: str, negative: str, width: Any, height: Any, steps: Any, guidance: Any, seed: Any,
                 num_images: Any) -> dict[str, Any]:
    """The job's params from the form. Blank fields are left out (the router fills its defaults, or
    says the field is required); values go as typed, so the router's checks name any bad one."""
    raw = {"prompt": prompt, "negative_prompt": negative, "width": width, "height": height,
           "num_inference_steps": steps, "guidance_scale": guidance, "seed": typed_int(seed), "num_images": num_images}
    return {k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and not v.strip())}


def build(api: str | None = None) -> gr.Blocks:
    url = api_url(api)
    out_dir = output_dir("images")

    async def generate(app_id, prompt, negative, width, height, steps, guidance, seed, num_images,
                       request: gr.Request) -> AsyncIterator:
        # Outputs: error, progress, gallery, job info.
        params = image_params(prompt, negative, width, height, steps, guidance, seed, num_images)
        async with client(url, request) as c:
            try:
                job = await c.submit(app_id, params)
            except Exception as e:
                yield error_html(explain(e)), progress_html(0, "not submitted"), [], ""
                return
            job_id = job["job_id"]
            yield "", progress_html(0, "queued"), [], job_line(job)
            try:
                async for ev in c.events(job_id):
                    shown = event_progress(ev)
                    if shown is not None:
                        yield gr.skip(), progress_html(*shown), gr.skip(), gr.skip()
                job = await c.get(job_id)
                if job["status"] != "succeeded":
                    yield (error_html(f"{job['status']}: {job.get('error') or ''}"), progress_html(None, job["status"]), [],
                           job_line(job))
                    return
                sweep(out_dir)
                paths = []
                for i, img in enumerate(job["result"]["images"]):
                    p = out_dir / f"{job_id}-{i}.png"
                    p.write_bytes(await c.download(img["url"]))
                    paths.append(str(p))
            except Exception as e:
                yield error_html(explain(e)), gr.skip(), gr.skip(), gr.skip()
                return
            seed_used = job["result"].get("seed")
            note = " · untrained demo model: the images are noise" if job["result"].get("untrained") else ""
            yield ("", progress_html(1.0, "succeeded"), paths,
                   job_line(job) + (f" · seed {seed_used}" if seed_used is not None else "") + note)

    with gr.Blocks(delete_cache=DELETE_CACHE, title="GPU Orchestrator: images") as demo:
        gr.Markdown("## Text to image")
        with gr.Row():
            with gr.Column():
                model = gr.Radio(MODELS, value=DEFAULT, label="Model", elem_id="model")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", elem_id="negative-prompt")
                with gr.Row():
                    # Plain numbers, not sliders: the router's limits (per model) are the ones that count,
                    # and its message names the field when a value is outside them. The values are the
                    # chosen model's own defaults (set from the router when the page loads and when the
                    # model changes: the page and the API agree); these are SDXL's until then.
                    width = gr.Number(value=1024, precision=0, label="Width", elem_id="width")
                    height = gr.Number(value=1024, precision=0, label="Height", elem_id="height")
                with gr.Row():
                    steps = gr.Number(value=30, precision=0, label="Steps", elem_id="steps")
                    guidance = gr.Number(value=5.0, label="Guidance", elem_id="guidance")
                with gr.Row():
                    seed = gr.Textbox(label="Seed (blank: random)", elem_id="seed")
                    num_images = gr.Number(value=1, precision=0, label="Images", elem_id="num-images")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                error = gr.HTML(elem_id="error")
                progress = gr.HTML(progress_html(0, "idle"), elem_id="progress")
                gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2, format="png")
                info = gr.Markdown(elem_id="job-info")
        hinted = {"width": width, "height": height, "num_inference_steps": steps, "guidance_scale": guidance,
                  "num_images": num_images}

        async def load(app_id: str, request: gr.Request):
            """The router's image apps as the model choice (an app added to its config shows up
            here), and the chosen one's defaults. Unreadable: the built-in choice stays, and why."""
            apps, o, shown = await choice_updates(url, request, image_models, app_id)
            return [*shown, *field_updates(find_app(apps, o.value), hinted)]

        async def hints(app_id: str, request: gr.Request):
            apps, _ = await read_apps(url, request)  # unreadable: no hints (the router answers at submit)
            return field_updates(find_app(apps, app_id), hinted)

        demo.load(load, model, [model, error, *hinted.values()])
        model.change(hints, model, list(hinted.values()))
        go.click(generate, [model, prompt, negative, width, height, steps, guidance, seed, num_images],
                 [error, progress, gallery, info], show_progress="hidden")
    return demo.queue(default_concurrency_limit=CONCURRENCY)


def main() -> None:
    standalone(build, "images")


if __name__ == "__main__":
    main()
