"""Entry points named in serve_config.yaml (`impl: deployments.sdxl:SDXL`, ...): each module
re-exports a model class from gpu_orchestrator.models, where the code lives."""
