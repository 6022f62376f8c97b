"""A short headless Locust run of loadtests/broadcast.py against the reference: the CSV has deliveries and no failure."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from scenarios.harness.manifest import load_manifest
from scenarios.harness.target import Target

REPO = Path(__file__).resolve().parents[1]


def test_headless_locust_run_records_deliveries_without_failures(tmp_path):
    target = Target(
        load_manifest(REPO / "reference_server" / "target.toml"),
        profile={"workers": 2, "broadcast_mode": "pubsub"},
        redis_url="",
        log_path=tmp_path / "target.log",
    )
    cmd = target.manifest.command
    i = cmd.index("--redis-url")
    del cmd[i : i + 2]  # the server's own embedded broker
    target.start()
    try:
        broker = next(json.loads(line)["broker"] for line in target.log_lines() if '"server.start"' in line)
        proc = subprocess.run(
            [
                sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / "broadcast.py"),
                "--headless", "-u", "20", "-r", "20", "-t", "6s", "--host", target.ws_url,
                "--redis-url", broker, "--publish-rate", "10", "--drain-s", "2",
                "--csv", str(tmp_path / "run"), "--only-summary", "--no-plot",
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
    finally:
        report = target.stop()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert report.exit_code == 0 and not report.leftover_pids, report
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    bcast = rows[("BCAST", "bench")]
    published = int(rows[("PUBLISH", "bench")]["Request Count"])
    assert int(bcast["Request Count"]) > 0 and published > 0
    total_failures = sum(int(r["Failure Count"]) for r in rows.values() if r["Type"])
    assert total_failures == 0, {k: v["Failure Count"] for k, v in rows.items()}
    assert int(rows[("WS", "connect")]["Request Count"]) == 20
    # every user got every message published after it joined: at most what was published, per user
    assert int(bcast["Request Count"]) <= published * 20


def test_loss_accounting_and_latency_buckets_in_a_process_of_their_own():
    """tests/locust_checks.py: gaps, repeats, other JSON layouts, sub-ms buckets (locust patches its process)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.locust_checks"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
