"""`gpu-orch new-app NAME --task image|audio|text|chat` (gpu_orchestrator/ops/scaffold.py), run on copies
of this project: the files it writes, serve_config.yaml edited with its comments kept and valid in
both profiles, the generated tests passing, and refusals that write nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gpu_orchestrator.ops import kuberay, scaffold
from gpu_orchestrator.ops.scaffold_config import config_text
from gpu_orchestrator.ops.scaffold_inputs import ScaffoldError, class_name
from gpu_orchestrator.cli import cli
from gpu_orchestrator.core.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
# What a project checkout needs for new-app and for the generated tests to run as `make test` runs them.
PROJECT_FILES = ["serve_config.yaml", "pyproject.toml", "deploy/kuberay/rayservice.yaml", "tests/__init__.py",
                 "tests/conftest.py", "tests/ray_session.py", "tests/timing.py", "tests/helpers.py", "tests/unit/__init__.py"]
# Names no project is likely to have (the test runs in copies of this one, generated apps included).
TASKS = {"sc_pic": "image", "sc_hear": "audio", "sc_write": "text", "sc_talk": "chat"}


def make_project(dest: Path) -> Path:
    for rel in PROJECT_FILES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    shutil.copytree(ROOT / "runtime_envs", dest / "runtime_envs")
    shutil.copytree(ROOT / "deployments", dest / "deployments", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def new_app(root: Path, *args: str):
    return CliRunner().invoke(cli, ["new-app", *args, "--root", str(root)])


def orchestrator_args(root: Path) -> dict:
    cfg = yaml.safe_load((root / "serve_config.yaml").read_text())
    return next(a for a in cfg["applications"] if a["name"] == "orchestrator")["args"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with one app of each task generated into it."""
    root = make_project(tmp_path_factory.mktemp("project"))
    for name, task in TASKS.items():
        r = new_app(root, name, "--task", task)
        assert r.exit_code == 0, r.output
        assert f"wrote {root / 'deployments' / (name + '.py')}" in r.output and "gpu-orch up --demo" in r.output
    return root


def test_each_task_writes_its_module_runtime_env_and_test(project):
    for name, task in TASKS.items():
        module = (project / "deployments" / f"{name}.py").read_text()
        cls = class_name(name)
        assert f"class {cls}(ModelDeployment):" in module and "def load(self)" in module and "def infer(self" in module
        assert "def build_tiny(" in module and "ctx.check_cancelled()" in module and "ctx.progress(" in module
        assert f"gpu-orch new-app {name} --task {task}" in module
        assert "tiny_path: str | None = None" in module  # the test session passes it to every demo model
        env = yaml.safe_load((project / "runtime_envs" / f"{name}.yaml").read_text())
        assert env["env_vars"]["GPU_ORCH_MODEL"] == name and env["pip"]["packages"]
        assert f"from deployments.{name} import {cls}" in (project / "tests" / "unit" / f"test_app_{name}.py").read_text()
    # The real-profile loading call of each task.
    assert "AutoPipelineForText2Image.from_pretrained" in (project / "deployments/sc_pic.py").read_text()
    assert 'pipeline("automatic-speech-recognition"' in (project / "deployments/sc_hear.py").read_text()
    assert "AutoModelForCausalLM.from_pretrained" in (project / "deployments/sc_write.py").read_text()
    assert "apply_chat_template" in (project / "deployments/sc_talk.py").read_text()


def test_serve_config_keeps_its_text_and_validates_in_both_profiles(project):
    old = (ROOT / "serve_config.yaml").read_text().splitlines()
    new = (project / "serve_config.yaml").read_text().splitlines()
    # Every original line (comments included) is still there, in order: the entries were inserted.
    it = iter(new)
    assert all(any(line == n for n in it) for line in old)
    assert len(new) > len(old)
    args = orchestrator_args(project)
    shipped = orchestrator_args(ROOT)
    assert list(args["models"])[:len(shipped["models"])] == list(shipped["models"])
    assert [a["id"] for a in args["apps"]] == [a["id"] for a in shipped["apps"]] + list(TASKS)
    real, demo = parse_config(args), parse_config({**args, "profile": "demo"})
    want_task = {"image": "image", "audio": "transcription", "text": "generic", "chat": "chat"}
    for name, task in TASKS.items():
        m = real.models[name]
        assert m.impl == f"deployments.{name}:{class_name(name)}" and m.init["model"] and m.vram_gb > 0
        assert abs(m.num_gpus - m.vram_gb / 80) < 0.01  # as the other models (test_config)
        assert m.runtime_env == f"runtime_envs/{name}.yaml"
        d = demo.models[name]
        assert d.init == {"demo": True} and d.num_gpus == 0
        assert d.runtime_env == {"env_vars": {"GPU_ORCH_MODEL": name}}  # no pip virtualenv in the demo
        assert real.app(name).deployment == name and real.app(name).task == want_task[task]
        assert "untrained" in demo.app(name).name
    assert real.app("sc_talk").param("messages").type == "messages"
    assert real.app("sc_hear").param("audio").type == "file"
    # The KubeRay manifest was up to date, so it was rendered again (test_kuberay checks it in a project).
    assert (project / "deploy/kuberay/rayservice.yaml").read_text() == kuberay.render_text(
        yaml.safe_load((project / "serve_config.yaml").read_text()))


def test_the_generated_tests_pass(project):
    """The four generated test files, run by pytest in the project copy as `make test` would run them."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    tests = [f"tests/unit/test_app_{name}.py" for name in TASKS]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=project, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "12 passed" in r.stdout, r.stdout[-2000:]


def test_runtime_env_pins_replace_or_add_to_the_tasks_packages(tmp_path):
    root = make_project(tmp_path)
    r = new_app(root, "sc_pinned", "--task", "text", "--runtime-env", "transformers==4.57.1",
                "--runtime-env", "einops==0.8.1")
    assert r.exit_code == 0, r.output
    env = yaml.safe_load((root / "runtime_envs/sc_pinned.yaml").read_text())
    assert env["pip"]["packages"] == ["diffusers>=0.36,<1", "transformers==4.57.1", "tokenizers>=0.20", "safetensors>=0.4",
                                      "accelerate>=1.0", "einops==0.8.1"]
    assert "--runtime-env transformers==4.57.1" in (root / "deployments/sc_pinned.py").read_text()


@pytest.mark.parametrize("args, message", [
    (["sc_x", "--runtime-env", "transformers>=4.51"], "--runtime-env 'transformers>=4.51' is not PKG==VER"),
    (["sc_x", "--runtime-env", "torch"], "is not PKG==VER"),
    (["sc_x", "--runtime-env", "torch==2.13.0", "--runtime-env", "Torch==2.12.0"], "package 'Torch' given twice"),
])
def test_a_malformed_runtime_env_is_refused(tmp_path, args, message):
    root = make_project(tmp_path)
    before = snapshot(root)
    r = new_app(root, *args, "--task", "text")
    assert r.exit_code == 2 and message in r.output, r.output
    assert snapshot(root) == before


@pytest.mark.parametrize("name, message", [
    ("MyApp", "'MyApp' is not a valid app name: use lowercase letters, digits and '_', starting with a letter"),
    ("1st", "'1st' is not a valid app name"),
    ("my-app", "'my-app' is not a valid app name"),
    ("_private", "'_private' is not a valid app name"),
    ("a" * 41, "is too long: at most 40 characters"),
    ("class", "'class' is a Python keyword"),
    ("match", "'match' is a Python keyword"),
    ("router", "'router' is reserved by the stack"),
    ("echo", "'echo' clashes with an existing app: serve_config.yaml already has an app with id 'echo'"),
    ("transcribe", "'transcribe' clashes with an existing app"),
    ("llm", "'llm' clashes with an existing model: serve_config.yaml already has models.llm"),
    ("whisper_model", "'whisper_model' clashes with a deployment module: deployments/whisper_model.py already exists"),
    ("sc_mine", "'sc_mine' clashes with a runtime_env file: runtime_envs/sc_mine.yaml already exists"),
    ("sc_tested", "'sc_tested' clashes with a test file: tests/unit/test_app_sc_tested.py already exists"),
])
def test_names_that_are_not_identifiers_or_clash_are_refused_and_nothing_is_written(tmp_path, name, message):
    root = make_project(tmp_path)
    (root / "runtime_envs/sc_mine.yaml").write_text("env_vars: {}\n")
    (root / "tests/unit/test_app_sc_tested.py").write_text("")
    before = snapshot(root)
    r = new_app(root, name, "--task", "image")
    assert r.exit_code == 2, r.output
    error = r.output.strip().splitlines()[-1]
    assert error.startswith("Error: NAME ") and message in error, r.output  # one line, naming the clash
    assert snapshot(root) == before


def test_a_second_run_with_the_same_name_is_refused(tmp_path):
    root = make_project(tmp_path)
    assert new_app(root, "sc_twice", "--task", "chat").exit_code == 0
    before = snapshot(root)
    r = new_app(root, "sc_twice", "--task", "image")
    assert r.exit_code == 2 and "'sc_twice' clashes with an existing app" in r.output
    assert snapshot(root) == before


def test_a_root_without_serve_config_is_refused(tmp_path):
    r = new_app(tmp_path, "sc_pic", "--task", "image")
    assert r.exit_code == 2 and f"no serve_config.yaml in {tmp_path.resolve()}" in r.output
    assert list(tmp_path.iterdir()) == []


def test_dry_run_shows_the_files_and_the_config_diff_and_writes_nothing(tmp_path):
    root = make_project(tmp_path)
    before = snapshot(root)
    r = new_app(root, "sc_pic", "--task", "image", "--dry-run")
    assert r.exit_code == 0, r.output
    for line in ("create deployments/sc_pic.py", "create runtime_envs/sc_pic.yaml", "create tests/unit/test_app_sc_pic.py",
                 "update serve_config.yaml", "+        sc_pic:", "+          impl: deployments.sc_pic:ScPic",
                 "+        - id: sc_pic"):
        assert line in r.output, r.output
    assert snapshot(root) == before


def test_an_invalid_config_is_reported_and_nothing_written(tmp_path):
    root = make_project(tmp_path)
    cfg = root / "serve_config.yaml"
    cfg.write_text(cfg.read_text().replace("max_attempts: 3", "max_attempts: 0", 1))
    before = snapshot(root)
    r = new_app(root, "sc_pic", "--task", "image")
    assert r.exit_code == 1 and "would not validate in the real profile" in r.output
    assert "args.apps[0].max_attempts" in r.output  # the project's own validation names the field
    assert snapshot(root) == before


CONFIG_4 = """\
# A config with another layout: 4-space indentation, list items flush with their key.
applications:
-   name: orchestrator   # the app
    import_path: serve_apps.orchestrator:build_app
    args:
        models:
            echo:
                impl: deployments.echo:Echo
                # a comment inside the entry
                init:
                    load_time_s: 0.0

            # a comment about the next key
        apps:
        -   id: echo
            deployment: echo
            parameters:
            -   {name: message, type: string}
        # trailing comment
        router: {num_replicas: 1}
-   name: ui
    import_path: gradio_uis.serve:build_app
"""

CONFIG_FLOW = """\
applications:
  - name: orchestrator
    import_path: serve_apps.orchestrator:build_app
    args: {models: {echo: {impl: "deployments.echo:Echo"}}, apps: [{id: echo, deployment: echo}]}
"""


def test_the_config_edit_follows_another_layout_and_keeps_its_comments():
    new = config_text(CONFIG_4, "pic", "image")
    for line in CONFIG_4.splitlines():
        assert line in new.splitlines()
    lines = new.splitlines()
    assert lines.index("            pic:") > lines.index("                    load_time_s: 0.0")
    assert lines.index("        -   id: pic") > lines.index("            -   {name: message, type: string}")
    assert lines.index("            name: pic (stabilityai/sd-turbo)") == lines.index("        -   id: pic") + 1
    args = yaml.safe_load(new)["applications"][0]["args"]
    assert list(args["models"]) == ["echo", "pic"] and [a["id"] for a in args["apps"]] == ["echo", "pic"]
    assert args["router"] == {"num_replicas": 1}
    parse_config(args)
    with pytest.raises(ScaffoldError, match="must be a non-empty block mapping"):
        config_text(CONFIG_FLOW, "pic", "image")


def test_a_config_changed_meanwhile_is_not_overwritten_and_created_files_are_removed(tmp_path):
    root = make_project(tmp_path)
    plan = scaffold.plan(root, "sc_pic", "image")
    (root / "serve_config.yaml").write_text((root / "serve_config.yaml").read_text() + "# edited meanwhile\n")
    before = snapshot(root)
    with pytest.raises(ScaffoldError, match="serve_config.yaml changed while new-app ran"):
        scaffold.apply(plan)
    assert snapshot(root) == before
