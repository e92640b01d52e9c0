"""The composition root: one `Orchestrator` built from its ports (orchestrator.py), owning start,
the background loops and shutdown, with the ASGI app and the handle methods on it. serve/router.py
builds it over Postgres, Redis and Ray; memory.py over the in-memory twins, for tests. No Ray here."""
