"""The comparison run: the suite over several targets, and the matrix it writes.

* :mod:`.matrix` -- the matrix document from several runs' results (pure).
* :mod:`.html`   -- the matrix page and the per-case evidence pages (pure).
* :mod:`.runner` -- run each target in its own pytest process, write the pages.
* ``python -m scenarios.compare`` -- the command (see its ``--help``).
"""
