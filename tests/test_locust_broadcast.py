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


def test_gaps_and_repeats_in_a_users_sequence_are_failures():
    """The receive path of a user: stamps read by slicing, a gap counts each missing message, a repeat once."""
    from argparse import Namespace

    from locust.env import Environment

    from loadtests.broadcast import BroadcastUser

    env = Environment(user_classes=[BroadcastUser])
    env.parsed_options = Namespace(channels="bench", life_s=10.0, shape="steady", run_time=None)
    seen: list[tuple[str, str, float, object]] = []
    env.events.request.add_listener(
        lambda request_type, name, response_time, exception, **_: seen.append((request_type, name, response_time, exception))
    )
    user = BroadcastUser(env)
    user.channel = "bench"
    user.last = None
    now = 1_700_000_000_000_000_000

    def frame(seq: int, sent_ns: int) -> str:
        return json.dumps(
            {"ev": "broadcast", "channel": "bench", "id": None, "data": {"t": sent_ns, "s": seq, "p": "locust"}},
            separators=(",", ":"),
        )

    for seq in (1, 2, 5, 5, 6):
        user._on_message(frame(seq, now - 1_500_000), now)  # sent 1.5 ms before
    user._on_message('{"re":1,"ok":true}', now)  # a reply: not a broadcast
    # another target may lay its JSON out differently: parsed the slow way
    user._on_message(json.dumps({"ev": "broadcast", "channel": "bench", "data": {"s": 7, "t": now - 1_500_000}}), now)
    bcast = [s for s in seen if s[0] == "BCAST"]
    assert len(bcast) == 6 and all(abs(s[2] - 1.5) < 1e-9 for s in bcast)
    missing = [s for s in seen if s[:2] == ("LOSS", "missing")]
    duplicate = [s for s in seen if s[:2] == ("LOSS", "duplicate")]
    assert len(missing) == 2 and len(duplicate) == 1
    assert all(s[3] is not None for s in missing + duplicate)
    assert user.last == 7


def test_latency_buckets_keep_sub_millisecond_resolution():
    import locust.stats

    import loadtests.broadcast  # noqa: F401  (installs the finer buckets)

    bucket = locust.stats.bucket_response_time
    assert bucket(1.234) == 1.23 and bucket(42.37) == 42.4 and bucket(1234) == 1200
