"""Where jobs live: the JobStore protocol, the Postgres store and an in-memory one for tests."""
