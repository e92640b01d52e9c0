"""serve_config.yaml: import_path serve_apps.orchestrator:build_app. The builder lives in gpu_orchestrator.serve.app."""

from gpu_orchestrator.serve.app import build_app

__all__ = ["build_app"]
