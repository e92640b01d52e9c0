"""`gpu-orch keys` on a real database: the token once on stdout, refusals naming the option, list
never showing a token, revoke by name or id; and which key the CLI sends."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gpu_orchestrator.cli import cli
from gpu_orchestrator.ops.admin_key import stack_api_key

from .router_harness import db_url  # noqa: F401 (fixture)


def test_keys_create_list_revoke(db_url):
    run = CliRunner().invoke
    made = run(cli, ["keys", "create", "--name", "alice", "--scopes", "submit,read", "--apps", "echo,chat",
                     "--quota-jobs-per-min", "30", "--database-url", db_url])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("go_") and "\n" not in token  # alone on stdout: KEY=$(gpu-orch keys create ...)
    assert "shown once" in made.stderr and "apps chat, echo; 30 jobs/min" in made.stderr
    again = run(cli, ["keys", "create", "--name", "alice", "--scopes", "read", "--database-url", db_url])
    assert again.exit_code == 1 and "a live key named 'alice' exists" in again.output
    for args, says in ((["--name", "bad name", "--scopes", "read"], "--name"),
                       (["--name", "bob", "--scopes", "write"], "unknown scope 'write'"),
                       (["--name", "bob", "--scopes", "read", "--max-queued", "0"], "--max-queued")):
        bad = run(cli, ["keys", "create", *args, "--database-url", db_url])
        assert bad.exit_code == 2 and says in bad.output, bad.output
    listed = run(cli, ["keys", "list", "--database-url", db_url])
    assert "alice" in listed.output and "bob" not in listed.output and token not in listed.output
    key_id = token.split("_")[1]
    assert key_id in listed.output
    gone = run(cli, ["keys", "revoke", key_id, "--database-url", db_url])
    assert gone.exit_code == 0 and f"revoked key alice (id {key_id})" in gone.output
    assert run(cli, ["keys", "list", "--database-url", db_url]).output.strip() == "no keys"
    assert "revoked" in run(cli, ["keys", "list", "--revoked", "--database-url", db_url]).output
    missing = run(cli, ["keys", "revoke", "alice", "--database-url", db_url])
    assert missing.exit_code == 1 and "no live key" in missing.output


def test_the_cli_sends_the_stacks_admin_key_to_that_stack_only(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_ORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GPU_ORCH_API_KEY", raising=False)
    (tmp_path / "admin_key").write_text("go_aaaaaaaaaaaa_" + "s" * 43 + "\n")
    (tmp_path / "state.json").write_text(json.dumps({"url": "http://127.0.0.1:8000"}))
    assert stack_api_key("http://127.0.0.1:8000/") == "go_aaaaaaaaaaaa_" + "s" * 43
    assert stack_api_key("http://10.0.0.9:8000") is None  # another stack never made that key
    monkeypatch.setenv("GPU_ORCH_API_KEY", "go_bbbbbbbbbbbb_" + "t" * 43)
    assert stack_api_key("http://10.0.0.9:8000").startswith("go_bbbb")


def test_the_bootstrap_admin_key_is_made_once_and_kept_private(db_url, tmp_path):
    import stat

    from gpu_orchestrator.ops.admin_key import bootstrap_admin

    token = bootstrap_admin(db_url, tmp_path)
    kept = tmp_path / "admin_key"
    assert token and kept.read_text().strip() == token and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert bootstrap_admin(db_url, tmp_path) is None and kept.read_text().strip() == token  # the first up only
    assert not list(tmp_path.glob(".admin_key.*"))  # written whole, no temp file left
