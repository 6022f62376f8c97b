"""bench_broadcast's split of the server's CPU by process: workers summed, the rest by name."""

from __future__ import annotations

from loadtests.bench_broadcast import by_role


def test_cpu_per_delivery_by_process_sums_the_workers_and_orders_by_cost() -> None:
    before = {10: 1.0, 11: 2.0, 12: 3.0, 13: 0.5, 14: 0.0}
    after = {10: 1.1, 11: 3.0, 12: 4.5, 13: 0.7, 14: 0.0, 15: 0.05}  # 15 started meanwhile
    names = {10: "master", 11: "worker-0", 12: "worker-1", 13: "broadcaster", 14: "admin"}
    split = by_role(before, after, names, deliveries=100_000)
    assert list(split) == ["worker", "broadcaster", "master", "other", "admin"]
    assert split["worker"] == 25.0  # (1.0 + 1.5) s over 100,000 deliveries
    assert split["broadcaster"] == 2.0
    assert split["other"] == 0.5  # a process the admin API did not list when the phase began
