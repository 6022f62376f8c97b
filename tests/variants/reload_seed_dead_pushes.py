"""The seed's own bug (``reload_seed_timers``), seen by the scenario with disconnecting clients.

Its old timers push to sessions whose close is already known. Caught by
scenarios/test_reload.py (reload_disconnects).
"""

from .reload_seed_timers import apply

__all__ = ["apply"]
