"""Chat with an LLM (the router's chat apps: any `gpu-orch new-app --task chat` adds one): streamed
replies (the job's token events), history, system prompt, temperature, max tokens, and a Stop button
that cancels the job."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import gradio as gr

from gradio_uis.choices import Offer, choice_updates, field_updates, find_app, offer, read_apps
from gradio_uis.common import (CONCURRENCY, DELETE_CACHE, api_url, client, error_html, explain, job_line, standalone, typed_int)

# The choice until the page has the router's chat apps (AppSpec.task "chat"), and if it cannot.
APP_ID = "chat"
MODELS = [("Qwen2.5 7B Instruct", APP_ID)]
TASK = "chat"
UPDATE_EVERY_S = 0.1


def chat_messages(system: str, conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The job's `messages`: the system prompt (when set) and the turns so far."""
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    return head + [{"role": m["role"], "content": m["content"]} for m in conversation]


def chat_models(apps: list[dict[str, Any]] | None, current: str | None = None) -> Offer:
    """The page's model list from GET /v1/apps (None: it could not be read)."""
    return offer(apps, TASK, MODELS, APP_ID, current)


def build(api: str | None = None) -> gr.Blocks:
    url = api_url(api)
    running: dict[str, str] = {}  # browser session -> its job in progress (what Stop cancels)

    async def send(message: str, conversation: list[dict[str, str]], app_id: str, system: str, temperature: Any,
                   max_tokens: Any, min_tokens: Any, seed: Any, request: gr.Request) -> AsyncIterator:
        # Outputs: chatbot, conversation, input box, error, job info.
        if not message or not message.strip():
            yield gr.skip(), gr.skip(), gr.skip(), error_html("message: type something first"), gr.skip()
            return
        turns = conversation + [{"role": "user", "content": message}]
        params = {"messages": chat_messages(system, turns)}
        for k, v in (("temperature", temperature), ("max_tokens", max_tokens), ("min_tokens", min_tokens),
                     ("seed", typed_int(seed))):
            if v is not None:
                params[k] = v
        reply = {"role": "assistant", "content": ""}
        session = request.session_hash or ""
        finished = False
        async with client(url, request) as c:
            try:
                job = await c.submit(app_id or APP_ID, params)
            except Exception as e:
                yield gr.skip(), gr.skip(), gr.skip(), error_html(explain(e)), gr.skip()
                return
            job_id = running[session] = job["job_id"]
            shown = turns + [reply]
            yield shown, conversation, "", "", job_line(job)
            shown_at = 0.0
            try:
                async for ev in c.events(job_id):
                    data = ev.get("data") or {}
                    if ev.get("event") == "waiting":  # its model is not loaded yet: which, and how long
                        yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), job_line(job) + f" · {data.get('message', '')}"
                    elif ev.get("event") == "progress" and "token" in data:
                        reply["content"] += data["token"]
                        # Each update re-sends the whole conversation: one per token would keep this
                        # process busy (and Stop waiting) on a long reply. At most every 0.1 s.
                        if time.monotonic() - shown_at >= UPDATE_EVERY_S:
                            shown_at = time.monotonic()
                            yield shown, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                job = await c.get(job_id)
                finished = True
            except Exception as e:
                yield gr.skip(), gr.skip(), gr.skip(), error_html(explain(e)), gr.skip()
                return
            finally:
                running.pop(session, None)
                if not finished:  # the page went away mid-reply: stop the generation, as the API's streams do
                    try:
                        await c.cancel(job_id)
                    except Exception:
                        pass
        status = job["status"]
        if status == "succeeded":
            text = (job["result"] or {}).get("text") or ""
            if len(text) > len(reply["content"]):  # tokens lost on the way (events are lossy): the row has all
                reply["content"] = text
            note = " · untrained demo model: the text is noise" if (job["result"] or {}).get("untrained") else ""
            yield shown, turns + [reply], gr.skip(), "", job_line(job) + note
        elif status == "cancelled":
            reply["content"] += " [stopped]"
            yield shown, turns + [reply], gr.skip(), "", job_line(job)
        else:
            yield shown, conversation, message, error_html(f"{status}: {job.get('error') or ''}"), job_line(job)

    async def stop(request: gr.Request) -> str:
        job_id = running.get(request.session_hash or "")
        if job_id is None:
            return ""
        try:
            async with client(url, request) as c:
                await c.cancel(job_id)
        except Exception as e:
            return error_html(explain(e))
        return ""

    with gr.Blocks(delete_cache=DELETE_CACHE, title="GPU Orchestrator: chat") as demo:
        gr.Markdown("## Chat")
        conversation = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
                error = gr.HTML(elem_id="error")
                with gr.Row():
                    box = gr.Textbox(placeholder="Message", show_label=False, scale=5, elem_id="message")
                    send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="stop")
                info = gr.Markdown(elem_id="job-info")
            with gr.Column(scale=1):
                model = gr.Radio(MODELS, value=APP_ID, label="Model", elem_id="model")
                system = gr.Textbox(label="System prompt", lines=3, elem_id="system")
                temperature = gr.Number(value=0.7, label="Temperature", elem_id="temperature")
                # The chat app's own defaults (serve_config.yaml), so the page sends what the API would;
                # another model's from the router when it is chosen.
                max_tokens = gr.Number(value=512, precision=0, label="Max tokens", elem_id="max-tokens")
                with gr.Accordion("More", open=False):
                    min_tokens = gr.Number(value=0, precision=0, label="Min tokens (end of text ignored before)",
                                           elem_id="min-tokens")
                    seed = gr.Textbox(label="Seed (blank: random)", elem_id="seed")
                clear = gr.Button("Clear", elem_id="clear")
        hinted = {"max_tokens": max_tokens, "min_tokens": min_tokens, "temperature": temperature}

        async def load(app_id: str, request: gr.Request):
            """The router's chat apps as the model list (an app added to its config shows up here) and
            the chosen one's limits as hints. The values stay as shown (the user may be typing): a
            different model chosen here sets its own (model.change). Unreadable: the built-in stays."""
            apps, o, shown = await choice_updates(url, request, chat_models, app_id)
            return [*shown, *field_updates(find_app(apps, o.value), hinted, defaults=False)]

        async def defaults(app_id: str, request: gr.Request):
            """The chosen model's defaults and limits (the router still checks)."""
            apps, _ = await read_apps(url, request)  # unreadable: the fields keep what they show
            return field_updates(find_app(apps, app_id), hinted)

        # No spinners over the fields: the user may type while the page asks the router.
        demo.load(load, model, [model, error, *hinted.values()], show_progress="hidden")
        model.change(defaults, model, list(hinted.values()), show_progress="hidden")
        inputs = [box, conversation, model, system, temperature, max_tokens, min_tokens, seed]
        outputs = [chatbot, conversation, box, error, info]
        send_btn.click(send, inputs, outputs)
        box.submit(send, inputs, outputs)
        stop_btn.click(stop, None, error)
        clear.click(lambda: ([], [], "", ""), None, [chatbot, conversation, error, info])
    return demo.queue(default_concurrency_limit=CONCURRENCY)


def main() -> None:
    standalone(build, "chat")


if __name__ == "__main__":
    main()
