"""The CLI's progress bar over a job's events: it starts at the first step seen (its rate counts
steps from there), and it is drawn for the last time before the final status line, not after."""

from __future__ import annotations

import re

from gpu_orchestrator.cli.jobs import _follow


class Events:
    """A job's event stream and final state, as Client.events and Client.wait give them."""

    def __init__(self, events):
        self._events = events

    def events(self, job_id):
        yield from self._events

    def wait(self, job_id):
        return {"job_id": job_id, "status": "succeeded"}


def test_the_bar_starts_at_the_first_step_seen_and_ends_before_the_status(capsys):
    evs = [{"event": "progress", "data": {"step": 6, "total": 10}},
           {"event": "progress", "data": {"step": 8, "total": 10}},
           {"event": "progress", "data": {"step": 10, "total": 10}},
           {"event": "status", "data": {"status": "succeeded"}}]
    assert _follow(Events(evs), "3f2a9c1e-0000")["status"] == "succeeded"
    err = capsys.readouterr().err
    bar, _, after = err.rpartition("status: succeeded")
    assert "3f2a9c1e" in bar and "6/10" in bar and "10/10" in bar
    assert not re.search(r"(?<!\d)0/10", bar)  # no bar from zero: the steps before it were not seen here
    assert after.strip() == ""  # nothing redrawn after the end
