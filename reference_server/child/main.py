"""A child's entry point after the fork: :func:`child_main` (never returns).

It resets the signals the master coordinates (SIGINT ignored: the master handles Ctrl-C;
SIGUSR1, SIGUSR2 and SIGHUP ignored: reloads are the master's), asks the kernel for a
SIGTERM should the master die (``PR_SET_PDEATHSIG``), moves what it inherited from the
master out of the garbage collector's sight (``gc.freeze``: a collection then walks only what
this process made, which keeps the pauses it adds to a migration or a tick short), runs the
:class:`~.runtime.Runtime` on a new event loop until it stops, and exits with its code; a
crash is logged with its traceback and exits 1.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import signal
import sys
import traceback

from .boot import ChildBoot
from .runtime import Runtime


def _set_parent_death_signal(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main(boot: ChildBoot) -> None:
    """Entry point of a forked child; exits the process, never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master coordinates Ctrl-C
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != boot.master_pid:
            os._exit(0)  # the master died before we could watch it
        boot.log.rebind(boot.name)
        gc.freeze()  # the master's objects, inherited: never garbage here, and shared copy-on-write
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runtime = Runtime(boot, loop)
        code = loop.run_until_complete(runtime.run())
    except BaseException as exc:  # the last line of defence
        try:
            boot.log.error("process.crash", error=repr(exc), trace=traceback.format_exc())
        finally:
            code = 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)
