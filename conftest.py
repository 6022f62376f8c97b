# The scenario harness is a pytest plugin; registering it here makes it available to
# `pytest scenarios/` and `pytest tests/` alike (it is inert for tests that do not use it).
pytest_plugins = ["scenarios.harness.plugin"]
