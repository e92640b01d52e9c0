"""Entry points named in serve_config.yaml (`impl: deployments.sdxl:SDXL`, ...): the built-in models'
modules re-export a class from gpu_orchestrator.models, where their code lives; a module written by
`gpu-orch new-app` holds its class itself."""
