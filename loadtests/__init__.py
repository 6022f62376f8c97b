"""Load tests and benchmarks (Locust and broadcast benchmarks arrive with the broadcast capability)."""
