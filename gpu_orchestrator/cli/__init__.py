"""`gpu-orch`: start/stop the stack and talk to the router.

    gpu-orch up                         # Ray + embedded Postgres/Redis (if URLs unset) + deploy
    gpu-orch submit echo -p message=hi --wait
    gpu-orch status JOB_ID | jobs | cancel JOB_ID | apps | workers
    gpu-orch import-seed config/apps.yaml
    gpu-orch new-app NAME --task image|audio|text|chat   # scaffold a model app (module, runtime_env, config, test)
    gpu-orch costs | prune --older-than 30d [--dry-run]
    gpu-orch keys create --name alice --scopes submit,read [--apps sdxl] [--quota-jobs-per-min 60]
    gpu-orch render rayservice          # deploy/kuberay/rayservice.yaml from serve_config.yaml
    eval "$(gpu-orch env)"              # the `ray`/`serve` CLIs: the stack's Ray auth token
    gpu-orch logs [router|MODEL|controller|proxy] [-f]   # the Serve log of one part of the stack
    gpu-orch down
"""

from __future__ import annotations

from . import admin, jobs, keys, logs, stack  # noqa: F401 (each registers its commands on `cli`)
from .base import cli, main
from .jobs import _parse_params

__all__ = ["cli", "main", "_parse_params"]
