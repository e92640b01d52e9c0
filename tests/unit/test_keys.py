"""API keys, pure: the token format, scopes, who sees and cancels what, the auth mode."""

from __future__ import annotations

import pytest

from gpu_orchestrator.core.keys import (OPEN, ApiKey, Caller, Forbidden, Quota, Scope, auth_required, bearer,
                                        hash_secret, name_problem, new_token, parse_scopes, rate_retry_after,
                                        secret_matches, split_token)


def caller(*scopes: str, key_id: str = "aaaaaaaaaaaa", apps=None) -> Caller:
    return Caller.of(ApiKey(id=key_id, name="k", scopes=parse_scopes(scopes), apps=apps, quota=Quota()))


def test_a_token_carries_its_id_and_a_secret_stored_only_as_a_hash():
    token, key_id, stored = new_token()
    parts = split_token(token)
    assert parts is not None and parts[0] == key_id
    assert secret_matches(parts[1], stored) and stored == hash_secret(parts[1])
    assert parts[1] not in stored and token not in stored
    assert not secret_matches(parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B"), stored)
    assert new_token()[0] != token
    for bad in ("", "go_", "sk-abc", token + "x", token.replace("go_", "gx_"), f"go_{key_id}_short"):
        assert split_token(bad) is None, bad


def test_bearer_header():
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer(None) is None and bearer("Basic abc") is None and bearer("Bearer ") is None


def test_scopes_parse_and_name_what_is_wrong():
    assert parse_scopes(["submit", " read:all "]) == {Scope.submit, Scope.read_all}
    with pytest.raises(ValueError, match="unknown scope 'write'"):
        parse_scopes(["write"])
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes([" "])
    assert name_problem("alice") is None and name_problem("ci-bot@team.x") is None
    assert name_problem("") and name_problem("a b") and name_problem("-x") and name_problem("x" * 65)


def test_admin_holds_every_scope_and_read_all_implies_read():
    admin, auditor, reader = caller("admin"), caller("read:all"), caller("read")
    assert all(admin.has(s) for s in Scope)
    assert auditor.has(Scope.read) and not auditor.has(Scope.submit)
    assert not reader.has(Scope.read_all)
    with pytest.raises(Forbidden, match="lacks the 'submit' scope"):
        reader.require(Scope.submit)


def test_a_key_sees_its_own_jobs_and_read_all_sees_everyones():
    me = caller("read", "cancel", key_id="aaaaaaaaaaaa")
    assert me.sees("aaaaaaaaaaaa") and not me.sees("bbbbbbbbbbbb") and not me.sees(None)
    assert caller("read:all").sees("bbbbbbbbbbbb") and caller("read:all").sees(None)
    assert OPEN.sees("bbbbbbbbbbbb") and OPEN.may_cancel("bbbbbbbbbbbb")
    assert me.may_cancel("aaaaaaaaaaaa") and not me.may_cancel("bbbbbbbbbbbb")
    assert not caller("read:all", "cancel").may_cancel("bbbbbbbbbbbb")  # seeing is not cancelling
    assert caller("admin").may_cancel("bbbbbbbbbbbb")
    assert not caller("read").may_cancel("aaaaaaaaaaaa")  # its own, but no cancel scope


def test_a_key_limited_to_apps_submits_to_those_only():
    k = caller("submit", apps=frozenset({"sdxl"}))
    k.require_app("sdxl")
    with pytest.raises(Forbidden) as e:
        k.require_app("chat")
    assert e.value.field == "app_id" and "sdxl" in e.value.message


def test_auth_is_on_unless_the_proxy_listens_on_loopback_only():
    assert not auth_required("auto", "127.0.0.1") and not auth_required("auto", "localhost")
    assert not auth_required("auto", "::1") and not auth_required("auto", "127.0.1.1")
    assert auth_required("auto", "0.0.0.0") and auth_required("auto", "10.0.0.5") and auth_required("auto", None)
    assert auth_required("on", "127.0.0.1") and not auth_required("off", "0.0.0.0")


def test_rate_limit_retry_after_is_when_the_oldest_job_leaves_the_window():
    assert rate_retry_after(0.0) == 60 and rate_retry_after(59.5) == 1 and rate_retry_after(75) == 1
    assert rate_retry_after(30.2) == 30


def test_check_quota_refuses_past_either_limit_with_when_to_retry():
    from gpu_orchestrator.core.keys import QuotaExceeded, check_quota

    check_quota(Quota(), recent=10**6, oldest_recent_age_s=0.0, active=10**6)  # no limits
    check_quota(Quota(jobs_per_min=3, max_queued=2), recent=2, oldest_recent_age_s=10.0, active=1)
    with pytest.raises(QuotaExceeded) as e:
        check_quota(Quota(jobs_per_min=3), recent=3, oldest_recent_age_s=45.5, active=0)
    assert e.value.retry_after_s == 15 and "3 jobs per minute" in e.value.message
    with pytest.raises(QuotaExceeded) as e:
        check_quota(Quota(max_queued=2), recent=0, oldest_recent_age_s=None, active=2)
    assert e.value.retry_after_s == 5 and "2 jobs queued or running at once (2 now)" in e.value.message


def test_the_memory_store_counts_a_keys_quota_as_postgres_does():
    from gpu_orchestrator.core.keys import QuotaExceeded
    from gpu_orchestrator.store.memory import MemoryJobStore

    store = MemoryJobStore()
    for _ in range(2):
        store.submit(app_id="echo", params={}, owner="k1", quota=Quota(jobs_per_min=2))
    with pytest.raises(QuotaExceeded):
        store.submit(app_id="echo", params={}, owner="k1", quota=Quota(jobs_per_min=2))
    store.submit(app_id="echo", params={}, owner="k2", quota=Quota(jobs_per_min=2))  # per key
    with pytest.raises(QuotaExceeded):
        store.submit(app_id="echo", params={}, owner="k2", quota=Quota(max_queued=1))
