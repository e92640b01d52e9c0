"""bench/gpu/swap.py's CPU path (--dry-run), as CI runs it: each model whose packages this
environment has is built, loaded by its deployment's code, parked and woken; the others are named
as skipped; the table and the verdicts print, and nothing is called a PASS without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_swap_bench_dry_run_parks_and_wakes_and_prints_its_table(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "bench/gpu/swap.py", "--dry-run", "--dir", str(tmp_path / "m"), "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["model"]: row for row in json.loads(out.read_text())}
    torch_row = rows["torch"]  # needs torch only: always measured
    assert torch_row["state_after"] == "resident" and torch_row["error"] is None
    assert torch_row["host_gb"] > 0.1 and 0 < torch_row["warm_s"] < torch_row["cold_s"]
    for name, row in rows.items():
        assert ("skipped" in row and row["skipped"].startswith("no ")) or row["error"] is None, row
    assert "torch: warm swap at" in r.stdout and "n/a on CPU" in r.stdout and "PASS" not in r.stdout
    assert not (tmp_path / "m" / "torch").exists()  # the checkpoint is removed after its row
