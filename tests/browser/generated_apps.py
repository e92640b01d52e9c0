"""Apps exactly as `gpu-orch new-app NAME --task image|audio|chat` makes them, for the test session's
demo orchestrator (tests/ray_session.py test_args), so the UIs can be shown listing and running them.

What new-app writes, taken from the same functions: the `models.NAME` and `apps` entries of
serve_config.yaml (scaffold_config.model_entry, scaffold_config.app_entry) and the class of
deployments/NAME.py (scaffold_files.module_text). One difference: the class is not imported from
deployments/NAME.py (a test must not write into the checkout's deployments/) but from
`tests.browser.generated_apps.NAME`, a module this one makes from that same text when it is
imported, so the Serve build task and each replica (the repository's directory is on their sys.path)
import it as they would the file."""

from __future__ import annotations

import sys
import types
from typing import Any

from gpu_orchestrator.ops import scaffold_config, scaffold_files, scaffold_inputs

# Names no other test uses: deployments share the session's Redis (heartbeat keys per deployment).
APPS = {"ui_pic": "image", "ui_hear": "audio", "ui_talk": "chat"}


def _module(name: str, task: str) -> types.ModuleType:
    mod = types.ModuleType(f"{__name__}.{name}")
    mod.__file__ = f"deployments/{name}.py"  # also: cloudpickle sends its classes by reference (by name)
    sys.modules[mod.__name__] = mod
    exec(compile(scaffold_files.module_text(name, task), mod.__file__, "exec"), mod.__dict__)
    return mod


for _name, _task in APPS.items():
    globals()[_name] = _module(_name, _task)


def generated() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(models, apps) to add to the orchestrator's args: new-app's entries, the class from here."""
    models = {}
    for name, task in APPS.items():
        models[name] = scaffold_config.model_entry(name, task)
        models[name]["impl"] = f"{__name__}.{name}:{scaffold_inputs.class_name(name)}"
    return models, [scaffold_config.app_entry(name, task) for name, task in APPS.items()]
