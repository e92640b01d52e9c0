"""The key store's contract, run against both: store/access.py (Postgres) and its in-memory twin
store/memory_access.py."""

from __future__ import annotations

import pytest

from gpu_orchestrator.core.keys import KeyExists, KeyNotFound, Quota, Scope, secret_matches, split_token
from gpu_orchestrator.store.access import PostgresAccess
from gpu_orchestrator.store.memory_access import MemoryAccess
from gpu_orchestrator.store.postgres import PostgresJobStore
from tests.conftest import _backends


@pytest.fixture(params=["memory"] + [f"postgres-{b}" for b in _backends()])
def access(request):
    if request.param == "memory":
        yield MemoryAccess()
        return
    b = request.getfixturevalue(f"{request.param.removeprefix('postgres-')}_backend")
    db = b.fresh_database()
    s = PostgresJobStore.connect(b.url_for(db), migrate=False)
    yield PostgresAccess(s.engine)
    s.close()
    b.drop(db)


def test_a_created_keys_token_finds_it_and_nothing_else_does(access):
    assert not access.has_keys()
    key, token = access.create_key(name="alice", scopes=[Scope.submit, Scope.read], apps=["echo"],
                                   quota=Quota(jobs_per_min=10))
    key_id, secret = split_token(token)
    assert key_id == key.id and access.has_keys()
    found, secret_hash = access.key_for(key.id)
    assert found.name == "alice" and found.scopes == {Scope.submit, Scope.read} and found.apps == {"echo"}
    assert found.quota == Quota(jobs_per_min=10) and found.created_at is not None and found.revoked_at is None
    assert secret_matches(secret, secret_hash) and not secret_matches(secret + "x", secret_hash)
    assert access.key_for("000000000000") is None
    assert [k.name for k in access.keys()] == ["alice"]


def test_one_live_key_per_name(access):
    access.create_key(name="ci", scopes=[Scope.submit])
    with pytest.raises(KeyExists, match="ci"):
        access.create_key(name="ci", scopes=[Scope.read])
    access.revoke_key("ci")
    again, _ = access.create_key(name="ci", scopes=[Scope.read])  # the name is free once revoked
    assert [k.id for k in access.keys()] == [again.id]
    assert len(access.keys(revoked=True)) == 2


def test_revoke_by_id_or_name_the_id_winning_and_a_revoked_key_finds_nothing(access):
    a, _ = access.create_key(name="a", scopes=[Scope.read])
    b, _ = access.create_key(name=a.id, scopes=[Scope.read])  # a name that is another key's id
    revoked = access.revoke_key(a.id)
    assert revoked.id == a.id and revoked.revoked_at is not None
    assert access.key_for(a.id) is None and access.key_for(b.id) is not None
    assert access.revoke_key(a.id).id == b.id  # now only the name matches a live key
    with pytest.raises(KeyNotFound):
        access.revoke_key(a.id)
    with pytest.raises(KeyNotFound):
        access.revoke_key("nobody")
    assert access.keys() == [] and {k.id for k in access.keys(revoked=True)} == {a.id, b.id}


def test_artifact_owners(access):
    assert access.artifact_owners("artifact://x") == set()
    access.grant_artifact("artifact://x", "k1")
    access.grant_artifact("artifact://x", "k1")  # granting twice is fine
    access.grant_artifact("artifact://x", "k2")
    assert access.artifact_owners("artifact://x") == {"k1", "k2"} and access.artifact_owners("artifact://y") == set()


def test_memory_revoke_tells_the_cache():
    heard: list[str] = []
    m = MemoryAccess(on_revoke=heard.append)
    key, _ = m.create_key(name="a", scopes=[Scope.read])
    m.revoke_key("a")
    assert heard == [key.id]
