"""The benchmark harness runs end to end in its reduced form (figures are printed, not asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIGURES = [
    "floor: sh -c true", "floor: sh script.sh", "memory: RSS idle", "latency: 1-step true, submit→done (median)",
    "latency: 1-step true, submit→done (p95)", "step overhead: cost per extra sequential step",
    "ceiling: sh -c true runs per second, 8 threads", "throughput: 3-step tasks, 8 submitters",
    "throughput: 3-step tasks, 8 submitters, 2 polling clients", "parallel: 20 × sleep 0.5, async", "list: GET / with 100 tasks",
    "get: GET /<id>, 8 keep-alive clients", "burst: 1000 one-step tasks, 8 clients, drain", "burst: peak threads",
    "burst: peak RSS", "memory: peak RSS",
    "reference: one Python thread running 3-step tasks, durable starts, no server",
    "floor: a 4 KiB write made durable (fdatasync) in the data dir's file system",
]


@pytest.mark.timeout(300)
def test_quick_benchmark_prints_every_figure(tmp_path):
    tool = Path(__file__).resolve().parent.parent / "tools" / "bench.py"
    out = subprocess.run([sys.executable, str(tool), "--quick", "--data-parent", str(tmp_path)],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    names = [row["figure"] for row in rows]
    for figure in FIGURES:
        assert figure in names, figure
    burst = next(row for row in rows if row["figure"].startswith("burst:") and "drain" in row["figure"])
    assert burst["lost"] == 0 and burst["sampled_codes"] == {"0": sum(burst["sampled_codes"].values())}
    latency = next(row for row in rows if row["figure"] == "latency: 1-step true, submit→done (median)")
    assert latency["of_floors"].endswith("× (sh floor + 2 durable writes)"), latency
    lean = next(row for row in rows if row["figure"].startswith("reference:"))
    assert lean["value"] > 0 and lean["of_ceiling"].endswith("%")
    if shutil.which("wrk"):
        wrk = {row["figure"]: row for row in rows if row["figure"].startswith("wrk:")}
        assert set(wrk) == {"wrk: bare Bottle-on-cheroot handler (ceiling)", "wrk: GET /<id> of a finished task",
                            "wrk: GET /healthz"}
        assert all(row["value"] > 0 for row in wrk.values())
    else:
        assert any(row["figure"].startswith("wrk: skipped") for row in rows)
    assert "| figure | value | × floor | share of limit | target |" in out.stdout
    assert not list(tmp_path.iterdir())  # the temporary data dir is removed
