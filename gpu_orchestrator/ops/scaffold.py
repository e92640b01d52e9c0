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
"""

from __future__ import annotations

import difflib
import json
import keyword
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import yaml

from gpu_orchestrator.ops import config_edit
from gpu_orchestrator.ops.config_edit import APP_NAME, BUILD_APP, CONFIG, flow, scalar

KUBERAY_MANIFEST = "deploy/kuberay/rayservice.yaml"
MAX_NAME = 40
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Names taken by the stack itself: the router's Serve deployment and its application.
RESERVED = {"router", "orchestrator"}
# What the generated module and test import or define: the class must not be one of them.
_MODULE_NAMES = {"ModelDeployment", "JobContext", "JobCancelled", "ArtifactStore", "Transformers", "Any", "Callable",
                 "Iterator", "Path", "SimpleNamespace", "Recorder"}
_PKG_RE = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?P<extras>\[[A-Za-z0-9._,-]+\])?"
                     r"==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*(?:\.\*)?)$")
_PKG_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# --no-compile: pip byte-compiles every file it installs (17 of 24 s for transformers + diffusers
# here); Python compiles the few modules a replica imports on first use instead.
PIP_OPTIONS = ["--disable-pip-version-check", "--no-compile"]
TRANSFORMERS = ("transformers>=4.51,<6", "tokenizers>=0.20", "safetensors>=0.4", "accelerate>=1.0")


class ScaffoldError(ValueError):
    """The scaffold cannot be made as asked (the config would not validate, no place to insert)."""


class Refused(ScaffoldError):
    """Bad input: a NAME that is not an identifier or clashes, a malformed --runtime-env, no project."""


@dataclass(frozen=True)
class TaskSpec:
    app_task: str  # AppSpec.task
    what: str
    model_id: str  # the real profile's default model
    loader: str
    vram_gb: float
    load_s: float
    timeout_s: int
    max_in_flight: int
    packages: tuple[str, ...]
    parameters: tuple[dict[str, Any], ...]
    example: str


_SEED = {"name": "seed", "type": "integer", "minimum": 0, "maximum": 4294967295,
         "description": "random if unset; reported in the result"}
_LM_PARAMS = (
    {"name": "max_tokens", "type": "integer", "minimum": 1, "maximum": 4096, "default": 128},
    {"name": "min_tokens", "type": "integer", "minimum": 0, "maximum": 4096, "default": 0,
     "description": "generate at least this many tokens (end-of-sequence ignored before); capped at max_tokens"},
    {"name": "temperature", "type": "number", "minimum": 0, "maximum": 2, "default": 0.7},
    {"name": "seed", "type": "integer"},
)

TASKS: dict[str, TaskSpec] = {
    "image": TaskSpec(
        app_task="image", what="Text to image", model_id="stabilityai/sd-turbo",
        loader="diffusers AutoPipelineForText2Image", vram_gb=6, load_s=15, timeout_s=600, max_in_flight=2,
        # The same list as runtime_envs/sdxl.yaml: Ray keys pip virtualenvs by it, so they share one.
        packages=("diffusers>=0.36,<1", *TRANSFORMERS),
        parameters=(
            {"name": "prompt", "type": "string", "required": True, "max_length": 2000},
            {"name": "negative_prompt", "type": "string", "max_length": 2000},
            {"name": "width", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 512},
            {"name": "height", "type": "integer", "minimum": 64, "maximum": 2048, "multiple_of": 8, "default": 512},
            {"name": "num_inference_steps", "type": "integer", "minimum": 1, "maximum": 150, "default": 4},
            {"name": "guidance_scale", "type": "number", "minimum": 0, "maximum": 30, "default": 0.0},
            _SEED,
            {"name": "num_images", "type": "integer", "minimum": 1, "maximum": 4, "default": 1},
        ),
        example='gpu-orch submit {name} -p prompt="a red fox" -p width=256 -p height=256 --wait --out out/'),
    "audio": TaskSpec(
        app_task="transcription", what="Speech to text", model_id="openai/whisper-small",
        loader="transformers automatic-speech-recognition pipeline", vram_gb=3, load_s=10, timeout_s=1800,
        max_in_flight=2, packages=(*TRANSFORMERS, "imageio-ffmpeg>=0.5"),
        parameters=(
            {"name": "audio", "type": "file", "required": True, "accept": [".wav", ".mp3", ".flac", ".ogg", ".m4a", ".webm"]},
            {"name": "language", "type": "string", "max_length": 16, "description": "e.g. en; the model's default if unset"},
            {"name": "task", "type": "enum", "choices": ["transcribe", "translate"], "default": "transcribe"},
        ),
        example="gpu-orch submit {name} -f audio=clip.wav --wait"),
    "text": TaskSpec(
        app_task="generic", what="Text generation", model_id="Qwen/Qwen2.5-0.5B",
        loader="transformers AutoModelForCausalLM", vram_gb=3, load_s=10, timeout_s=600, max_in_flight=4,
        # The same list as runtime_envs/llm.yaml (one virtualenv for both).
        packages=TRANSFORMERS,
        parameters=({"name": "prompt", "type": "string", "required": True, "max_length": 20000}, *_LM_PARAMS),
        example='gpu-orch submit {name} -p prompt="Once upon a time" -p max_tokens=32 --wait'),
    "chat": TaskSpec(
        app_task="chat", what="Chat", model_id="Qwen/Qwen2.5-0.5B-Instruct",
        loader="transformers AutoModelForCausalLM with its chat template", vram_gb=3, load_s=10, timeout_s=600,
        max_in_flight=4, packages=TRANSFORMERS,
        parameters=({"name": "messages", "type": "messages", "required": True, "max_length": 100000}, *_LM_PARAMS),
        example="gpu-orch submit {name} -p messages='[{{\"role\":\"user\",\"content\":\"hi\"}}]' --wait"),
}


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


# -- inputs -----------------------------------------------------------------------------------------


def class_name(name: str) -> str:
    cls = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return cls + "App" if cls in _MODULE_NAMES else cls


def check_name(name: str) -> None:
    """NAME: a lowercase Python identifier (it is a module, a Serve deployment and an app id)."""
    if not _NAME_RE.match(name):
        raise Refused(f"NAME {name!r} is not a valid app name: use lowercase letters, digits and '_', "
                      "starting with a letter (it names a Python module, a model and an app id)")
    if len(name) > MAX_NAME:
        raise Refused(f"NAME {name!r} is too long: at most {MAX_NAME} characters")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or name == "type":
        raise Refused(f"NAME {name!r} is a Python keyword: pick another name")
    if name in RESERVED:
        raise Refused(f"NAME {name!r} is reserved by the stack (its router deployment and application): pick another name")


def parse_packages(specs: tuple[str, ...] | list[str]) -> list[str]:
    """--runtime-env values: each PKG==VER (extras allowed: PKG[extra]==VER), each package once."""
    out, seen = [], {}
    for spec in specs:
        m = _PKG_RE.match(spec.strip())
        if not m:
            raise Refused(f"--runtime-env {spec!r} is not PKG==VER (e.g. transformers==4.57.1)")
        key = _normalise(m["name"])
        if key in seen:
            raise Refused(f"--runtime-env: package {m['name']!r} given twice ({seen[key]!r} and {spec!r})")
        seen[key] = spec
        out.append(spec.strip())
    return out


def _normalise(package: str) -> str:
    return re.sub(r"[-_.]+", "-", package).lower()


def merged_packages(task: str, pinned: list[str]) -> list[str]:
    """The task's default packages, each replaced by a --runtime-env pin of the same package, then
    the other pins."""
    pins = {_normalise(_PKG_NAME_RE.match(p).group()): p for p in pinned}
    out = []
    for default in TASKS[task].packages:
        out.append(pins.pop(_normalise(_PKG_NAME_RE.match(default).group()), default))
    return out + list(pins.values())


# -- file texts -------------------------------------------------------------------------------------


def _template(name: str) -> str:
    return resources.files("gpu_orchestrator").joinpath("templates").joinpath("new_app").joinpath(name).read_text()


def command_line(name: str, task: str, pinned: list[str] | tuple[str, ...] = ()) -> str:
    return " ".join(["gpu-orch new-app", name, "--task", task, *(f"--runtime-env {p}" for p in pinned)])


_HF_CHAT = '''
    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
'''
_TINY_CHAT = '''
        def chat_prompt(self, messages: list[dict[str, str]]) -> str:
            return " ".join(f"{m['role']} : {m['content']}" for m in messages) + " assistant :"
'''


def module_text(name: str, task: str, pinned: list[str] | tuple[str, ...] = ()) -> str:
    """deployments/NAME.py: the model class."""
    subs = {"name": name, "cls": class_name(name), "task": task, "command": command_line(name, task, pinned),
            "model_id": TASKS[task].model_id}
    if task in ("text", "chat"):
        chat = task == "chat"
        subs["lm_helpers"] = Template(_template("lm_helpers.py.tmpl")).substitute(
            hf_chat=_HF_CHAT if chat else "", tiny_chat=_TINY_CHAT if chat else "",
            tiny_chat_doc=", `chat_prompt`" if chat else "").rstrip("\n")
    return Template(_template(f"{task}.py.tmpl")).substitute(subs).rstrip("\n") + "\n"


def test_text(name: str, task: str, pinned: list[str] | tuple[str, ...] = ()) -> str:
    """tests/unit/test_app_NAME.py: the tiny model on CPU: output, progress, cancel."""
    subs = {"name": name, "cls": class_name(name), "task": task, "command": command_line(name, task, pinned)}
    subs["recorder"] = Template(_template("test_common.py.tmpl")).substitute(subs).rstrip("\n") + "\n"
    return Template(_template(f"test_{task}.py.tmpl")).substitute(subs).rstrip("\n") + "\n"


def runtime_env_text(name: str, task: str, pinned: list[str] | tuple[str, ...] = ()) -> str:
    """runtime_envs/NAME.yaml: the real profile's pip virtualenv (on top of the base install)."""
    packages = merged_packages(task, list(pinned))
    shared = ""
    if tuple(packages) == TASKS[task].packages:
        twin = "sdxl.yaml and zimage.yaml" if task == "image" else "llm.yaml" if task in ("text", "chat") else ""
        if twin:
            shared = (f"\n# The list is {twin}'s on purpose: Ray keys its pip virtualenvs by it, so these models "
                      "share one.")
    lines = [
        f"# runtime_env of the `{name}` model deployment in the real profile (generated by `{command_line(name, task, pinned)}`):",
        "# a pip virtualenv on top of the base install (torch, numpy, pillow); add what your model imports."
        + shared,
        f"# The demo profile uses none (serve_config.yaml models.{name}.demo.runtime_env): its tiny model needs torch only.",
        "pip:",
        "  packages:",
        *(f"    - {scalar(p)}" for p in packages),
        f"  pip_install_options: {json.dumps(PIP_OPTIONS)}",
        "env_vars:",
        f"  GPU_ORCH_MODEL: {name}",
    ]
    if any(_normalise(_PKG_NAME_RE.match(p).group()) in ("transformers", "tokenizers") for p in packages):
        lines.append('  TOKENIZERS_PARALLELISM: "false"')
    return "\n".join(lines) + "\n"


def model_entry(name: str, task: str) -> dict[str, Any]:
    """models.NAME in serve_config.yaml, as data."""
    spec = TASKS[task]
    return {
        "impl": f"deployments.{name}:{class_name(name)}",
        "runtime_env": f"runtime_envs/{name}.yaml",
        "num_gpus": round(spec.vram_gb / 80, 4),
        "vram_gb": spec.vram_gb,
        "load_s": spec.load_s,
        "init": {"model": spec.model_id},
        "demo": {"init": {"demo": True}, "runtime_env": {"env_vars": {"GPU_ORCH_MODEL": name}}},
    }


def app_entry(name: str, task: str) -> dict[str, Any]:
    """The app (id NAME) in serve_config.yaml's apps list, as data."""
    spec = TASKS[task]
    return {
        "id": name,
        "name": f"{name} ({spec.model_id})",
        "description": f"{spec.what} ({spec.loader}); generated by gpu-orch new-app, the code is deployments/{name}.py.",
        "task": spec.app_task,
        "deployment": name,
        "max_attempts": 2,
        "timeout_s": spec.timeout_s,
        "max_in_flight": spec.max_in_flight,
        "parameters": [dict(p) for p in spec.parameters],
    }


def _model_block(name: str, task: str, indent: int, step: int, pinned: list[str] | tuple[str, ...]) -> list[str]:
    m = model_entry(name, task)
    pad, inner = " " * indent, " " * (indent + step)
    return [
        f"{pad}# Generated by `{command_line(name, task, pinned)}`: the class is deployments/{name}.py.",
        f"{pad}{name}:",
        f"{inner}impl: {m['impl']}",
        f"{inner}runtime_env: {m['runtime_env']}",
        f"{inner}num_gpus: {scalar(m['num_gpus'])}",
        f"{inner}vram_gb: {scalar(m['vram_gb'])}        # guessed for {m['init']['model']}: measure yours (docs/models.md)",
        f"{inner}load_s: {scalar(m['load_s'])}",
        f"{inner}init: {flow(m['init'])}",
        f"{inner}demo: {flow(m['demo'])}   # torch only: no pip virtualenv",
    ]


def _app_block(name: str, task: str, dash: int, col: int) -> list[str]:
    """The app as a list item: its dash at column `dash`, its keys at column `col` (as the others)."""
    a = app_entry(name, task)
    inner = " " * col
    lines = [f"{' ' * dash}-{' ' * (col - dash - 1)}id: {scalar(a['id'])}"]
    lines += [f"{inner}{k}: {scalar(a[k])}" for k in ("name", "description", "task", "deployment", "max_attempts",
                                                          "timeout_s", "max_in_flight")]
    lines.append(f"{inner}parameters:")
    lines += [f"{inner}  - {flow(p)}" for p in a["parameters"]]
    return lines


# -- serve_config.yaml, edited as text (config_edit.py) ---------------------------------------


def config_text(text: str, name: str, task: str, pinned: list[str] | tuple[str, ...] = ()) -> str:
    """serve_config.yaml's text with models.NAME and the app NAME inserted after the last model and
    the last app of the orchestrator application; comments and layout kept. Checked: parsed again,
    it is the old config plus exactly those entries (ScaffoldError otherwise)."""
    try:
        new = config_edit.insert(text, lambda indent, step: _model_block(name, task, indent, step, pinned),
                                 lambda dash, col: _app_block(name, task, dash, col),
                                 hint=f"gpu-orch new-app {name} --task {task} --dry-run")
    except config_edit.ConfigEditError as e:
        raise ScaffoldError(str(e)) from None
    _check_config(text, new, name, task)
    return new


def _check_config(old_text: str, new_text: str, name: str, task: str) -> None:
    """The new text parses to the old config plus models.NAME and the app NAME, and validates in both
    profiles with the project's own validation (gpu_orchestrator.core.config)."""
    from gpu_orchestrator.core.config import ConfigError, parse_config

    new, want = yaml.safe_load(new_text), yaml.safe_load(old_text)
    args = config_edit.orchestrator_args(want)
    args["models"][name] = model_entry(name, task)
    args["apps"].append(app_entry(name, task))
    if new != want:
        raise ScaffoldError(f"new-app could not place its entries in {CONFIG} cleanly (its layout is unusual): nothing "
                            f"written; add them by hand (gpu-orch new-app {name} --task {task} --dry-run shows them)")
    for profile in ("real", "demo"):
        try:
            parse_config({**config_edit.orchestrator_args(new), "profile": profile})
        except ConfigError as e:
            raise ScaffoldError(f"{CONFIG} with app {name!r} would not validate in the {profile} profile "
                                f"(nothing written):\n{e}") from None


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
