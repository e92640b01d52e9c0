"""The router's key cache: what it may keep, and for how long (service/auth.py KeyCache)."""

from __future__ import annotations

from gpu_orchestrator.core.keys import ApiKey, Quota, Scope
from gpu_orchestrator.service.auth import KeyCache
from gpu_orchestrator.store.memory import ManualClock


def key(kid: str = "k1") -> tuple[ApiKey, str]:
    return ApiKey(id=kid, name="n", scopes=frozenset({Scope.submit}), apps=None, quota=Quota()), "hash"


def test_kept_only_while_live_and_for_ttl():
    clock = ManualClock()
    c = KeyCache(ttl_s=60, clock=clock)
    gen, hit = c.get("k1")
    c.put("k1", gen, key())
    assert c.get("k1")[1] is None  # not listening yet: nothing is kept
    c.set_live(True)
    gen, _ = c.get("k1")
    c.put("k1", gen, key())
    assert c.get("k1")[1] == key()
    clock.advance(61)
    assert c.get("k1")[1] is None
    gen, _ = c.get("k1")
    c.put("k1", gen, key())
    c.set_live(False)  # the listener lost its connection: revokes may be missed, so forget all
    assert c.get("k1")[1] is None


def test_a_lookup_that_raced_a_revoke_does_not_store_its_answer():
    c = KeyCache()
    c.set_live(True)
    gen, _ = c.get("k1")  # a request starts reading the key ...
    c.forget("k1")  # ... the key is revoked meanwhile ...
    c.put("k1", gen, key())  # ... and the read, from before the revoke, comes back
    assert c.get("k1")[1] is None
