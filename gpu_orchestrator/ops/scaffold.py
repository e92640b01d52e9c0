"""`gpu-orch new-app NAME --task image|audio|text|chat`: a new model app, scaffolded.

Writes, under a project root (the directory that holds serve_config.yaml):

- `deployments/NAME.py`: the model class (gpu_orchestrator.models.base.ModelDeployment): `load`
  (the real `from_pretrained` call, or a tiny random-weight model built in memory for the demo
  profile), `infer` with progress events and cancel checks between steps;
- `runtime_envs/NAME.yaml`: its pip packages for the real profile (the task's defaults plus
  `--runtime-env PKG==VER`);
- `tests/unit/test_app_NAME.py`: builds the tiny model on CPU, runs jobs, checks the output, the
  progress events and that a cancel stops it;
- in serve_config.yaml: `models.NAME` (with a `demo:` block whose runtime_env has no pip packages:
  the tiny model needs torch only) and an `apps` entry with id NAME. The file is edited as text
  (its comments and layout stay), and the result is checked before anything is written: parsed
  again, it must be the old config plus exactly those two entries, valid in the real and the demo
  profile;
- deploy/kuberay/rayservice.yaml, when it exists and was up to date: rendered again.

`plan()` is pure apart from reading the project (it raises Refused or ScaffoldError and writes
nothing); `apply()` writes a plan: new files first (never over an existing one), serve_config.yaml
last, by rename; on a failure it removes what it had created.

Its parts: the inputs and their checks (scaffold_inputs: TASKS, NAME, --runtime-env, the errors), the new
files' texts (scaffold_files), the serve_config.yaml entries and edit (scaffold_config).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gpu_orchestrator.ops import config_edit
from gpu_orchestrator.ops.config_edit import APP_NAME, BUILD_APP, CONFIG
from gpu_orchestrator.ops.scaffold_config import config_text
from gpu_orchestrator.ops.scaffold_files import module_text, runtime_env_text, test_text
from gpu_orchestrator.ops.scaffold_inputs import TASKS, Refused, ScaffoldError, check_name, class_name, parse_packages

KUBERAY_MANIFEST = "deploy/kuberay/rayservice.yaml"


@dataclass
class Plan:
    root: Path
    name: str
    task: str
    class_name: str
    new_files: dict[str, str]  # relative path -> text (created; never overwritten)
    updates: dict[str, tuple[str, str]] = field(default_factory=dict)  # relative path -> (old text, new text)

    @property
    def example(self) -> str:
        return TASKS[self.task].example.format(name=self.name)

    def describe(self) -> str:
        """What apply() would write: the new files, and a diff of each changed one."""
        lines = [f"new-app {self.name} (task {self.task}, class {self.class_name}) would write, under {self.root}:"]
        lines += [f"  create {rel} ({text.count(chr(10))} lines)" for rel, text in self.new_files.items()]
        lines += [f"  update {rel}" for rel in self.updates]
        for rel, (old, new) in self.updates.items():
            lines.append("")
            lines += [ln.rstrip("\n") for ln in difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{rel}", f"b/{rel}", n=2)]
        return "\n".join(lines)


# -- the plan, and writing it -----------------------------------------------------------------------


def paths(name: str) -> dict[str, str]:
    return {"module": f"deployments/{name}.py", "runtime_env": f"runtime_envs/{name}.yaml",
            "test": f"tests/unit/test_app_{name}.py"}


def plan(root: Path | str, name: str, task: str, runtime_env: tuple[str, ...] | list[str] = ()) -> Plan:
    """Everything new-app would write for NAME under root, checked; writes nothing.

    Refused: a bad NAME, one that clashes with an app id, a model, a deployment module, a
    runtime_env file or a test file, a malformed --runtime-env, no serve_config.yaml under root.
    ScaffoldError: the config cannot take the entries (layout) or would not validate."""
    root = Path(root)
    if task not in TASKS:
        raise Refused(f"--task {task!r}: one of {', '.join(TASKS)}")
    cfg_path = root / CONFIG
    if not cfg_path.is_file():
        raise Refused(f"no {CONFIG} in {root.resolve()}: run new-app in the project's directory, or pass --root")
    check_name(name)
    pinned = parse_packages(runtime_env)
    text = cfg_path.read_text()
    try:
        data = yaml.safe_load(text)
        args = config_edit.orchestrator_args(data)
    except (yaml.YAMLError, StopIteration, KeyError, TypeError, AttributeError):
        raise ScaffoldError(f"{CONFIG} has no application {APP_NAME!r} (import_path {BUILD_APP}) with `args`") from None
    app_ids = {a.get("id") for a in args.get("apps") or [] if isinstance(a, dict)}
    if name in app_ids:
        raise Refused(f"NAME {name!r} clashes with an existing app: {CONFIG} already has an app with id {name!r}")
    if name in (args.get("models") or {}):
        raise Refused(f"NAME {name!r} clashes with an existing model: {CONFIG} already has models.{name}")
    for what, rel in paths(name).items():
        if (root / rel).exists():
            label = {"module": "a deployment module", "runtime_env": "a runtime_env file", "test": "a test file"}[what]
            raise Refused(f"NAME {name!r} clashes with {label}: {rel} already exists")
    files = {
        paths(name)["module"]: module_text(name, task, pinned),
        paths(name)["runtime_env"]: runtime_env_text(name, task, pinned),
        paths(name)["test"]: test_text(name, task, pinned),
    }
    for rel, body in files.items():
        if rel.endswith(".py"):
            compile(body, rel, "exec")  # a template bug shows here, not in the user's project
        elif not isinstance(yaml.safe_load(body), dict):
            raise ScaffoldError(f"{rel}: not a mapping")  # pragma: no cover - template bug
    new_text = config_text(text, name, task, pinned)
    p = Plan(root=root, name=name, task=task, class_name=class_name(name), new_files=files,
             updates={CONFIG: (text, new_text)})
    manifest = root / KUBERAY_MANIFEST
    if manifest.is_file():
        from gpu_orchestrator.ops import kuberay

        old_manifest = manifest.read_text()
        if old_manifest == kuberay.render_text(data):  # up to date: keep it so (a test checks it)
            p.updates[KUBERAY_MANIFEST] = (old_manifest, kuberay.render_text(yaml.safe_load(new_text)))
    return p


def apply(p: Plan) -> list[Path]:
    """Write the plan: new files first (exclusively: an existing file is never overwritten), then
    the updated files, each by rename after checking it did not change since the plan was made. On
    any failure, what was created is removed again and the error raised."""
    created: list[Path] = []
    made_dirs: list[Path] = []
    replaced: list[tuple[Path, str]] = []
    try:
        for rel, text in p.new_files.items():
            path = p.root / rel
            missing = [d for d in reversed(path.parents) if not d.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs += missing
            with open(path, "x") as f:
                created.append(path)
                f.write(text)
        for rel, (old, new) in p.updates.items():
            path = p.root / rel
            if path.read_text() != old:
                raise ScaffoldError(f"{rel} changed while new-app ran: nothing written")
            tmp = path.with_name(f".{path.name}.new-app-{os.getpid()}")
            try:
                tmp.write_text(new)
                os.chmod(tmp, path.stat().st_mode & 0o7777)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            replaced.append((path, old))
    except BaseException:
        for path, old in replaced:
            path.write_text(old)
        for path in created:
            path.unlink(missing_ok=True)
        for d in reversed(made_dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return created + [path for path, _ in replaced]
