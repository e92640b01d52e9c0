"""Gradio UIs over the router's HTTP API (never the database): images, speech, chat, admin.

Each module has `build(api_url) -> gr.Blocks` and runs standalone (`python -m gradio_uis.images
--api URL`); `gradio_uis.serve:build_app` serves one as a Ray Serve application (serve_config.yaml).
"""
