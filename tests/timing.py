"""Where the suite's wall time goes, printed at the end of every run: each xdist worker's busy
seconds, split by test folder (and the Ray session's first deploy), so a CI log says which chain
sets the suite's length (`make test` must stay under 12 minutes on 2 cores)."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

_busy: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_slowest_setup: dict[str, tuple[float, str]] = {}
_started = time.monotonic()


def _where(nodeid: str) -> str:
    parts = Path(nodeid.split("::", 1)[0]).parts
    return "/".join(parts[:2]) if len(parts) > 1 else parts[0]


@pytest.hookimpl
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)  # set on the xdist controller: the worker that ran it
    worker = node.gateway.id if node is not None else "main"
    _busy[worker][_where(report.nodeid)] += report.duration
    if report.when == "setup" and report.duration > _slowest_setup.get(worker, (0.0, ""))[0]:
        _slowest_setup[worker] = (report.duration, report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter) -> None:
    if not _busy:
        return
    tr = terminalreporter
    tr.write_sep("=", f"busy seconds per worker ({time.monotonic() - _started:.0f} s wall)")
    for worker in sorted(_busy):
        parts = ", ".join(f"{where} {s:.0f}" for where, s in _busy[worker].most_common())
        setup_s, setup_of = _slowest_setup.get(worker, (0.0, ""))
        tr.write_line(f"{worker}: {sum(_busy[worker].values()):.0f} s ({parts}); "
                      f"longest setup {setup_s:.0f} s ({setup_of.split('::')[-1]})")
