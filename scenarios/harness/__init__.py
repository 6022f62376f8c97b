"""The scenario harness: drives any target through the written contract (docs/contract-v1.md).

Modules, one concern each:

* :mod:`.manifest` -- load and validate a target manifest (TOML).
* :mod:`.target`   -- start a target on free loopback ports, wait until ready, stop it.
* :mod:`.broker`   -- the embedded fakeredis broker the harness provides (or a real Redis URL).
* :mod:`.client`   -- a WebSocket client that records its history.
* :mod:`.admin`    -- the admin API client.
* :mod:`.evidence` -- named checks with expected/observed values; the failure message.
* :mod:`.waiting`  -- wait on an observable condition with a bound.
* :mod:`.probe`    -- the honesty probe's requests and how their answers are judged.
* :mod:`.codes`    -- the contract's error and close codes, in one table.
* :mod:`.conformance` -- every answer checked against ``docs/contract/*.json``.
* :mod:`.plugin`   -- the pytest plugin: options, fixtures, capability gating, known
  failures, results.

The comparison over several targets (matrix, pages) is :mod:`scenarios.compare`.
"""

#: The version results are reported under, and the manifest versions this harness runs.
CONTRACT_VERSION = "1.2"
CONTRACT_VERSIONS = ("1", "1.1", "1.2")
