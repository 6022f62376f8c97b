"""The broker a target is given: a real Redis URL, or an embedded fakeredis TCP server.

Three kinds (``--broker`` of the suite):

* :class:`EmbeddedBroker` (default): ``python -m scenarios.harness.broker``
  serves fakeredis on a loopback port and prints ``READY <port>`` once it
  accepts connections; the harness starts it as a child process and stops it
  at the end of the run, so several processes (and several targets) share one
  broker. It can be *restarted* (:meth:`restart`): every client connection is
  dropped and the port refuses connections for the outage, then it serves
  again with its data intact, as a Redis with persistence would.
* :class:`RedisServer`: a real ``redis-server`` the harness runs on a free
  loopback port, with an append-only file (``appendfsync always``) in a
  temporary directory; :meth:`restart` stops it (it writes everything) and
  starts it again on the same port.
* :class:`ExternalRedis`: a URL the user gives; it cannot be restarted, so the
  scenarios that restart Redis are skipped with that reason.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def _wait_port(port: int, up: bool, timeout: float) -> bool:
    """Wait until a connection to ``port`` succeeds (``up``) or is refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if up:
                return True
        except OSError:
            if not up:
                return True
        threading.Event().wait(0.01)  # polling a port: there is nothing to wait on
    return False


def _stop_child(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedBroker:
    kind = "embedded-fakeredis"
    restartable = True

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.port = 0

    def start(self, timeout: float = 20.0) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scenarios.harness.broker", "--port", "0"],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = result[0] if result else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"embedded broker did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        return self.url

    def restart(self, down_s: float) -> tuple[float, float]:
        """Drop every connection, refuse new ones for ``down_s``, serve again: (down_at, up_at)."""
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"restart {down_s}\n")
        self.proc.stdin.flush()
        down = self.proc.stdout.readline().split()
        up = self.proc.stdout.readline().split()
        if down[:1] != ["DOWN"] or up[:1] != ["UP"]:
            raise RuntimeError(f"embedded broker restart failed: {down} {up}")
        return float(down[1]), float(up[1])

    def stop(self) -> None:
        if self.proc is not None:
            _stop_child(self.proc)
            for pipe in (self.proc.stdout, self.proc.stdin):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            self.proc = None


class RedisServer:
    """A real redis-server run by the harness (append-only file, so a restart keeps the data)."""

    kind = "redis-server"
    restartable = True

    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = shutil.which(binary) or binary
        self.proc: subprocess.Popen | None = None
        self.dir = ""
        self.port = 0
        self.url = ""

    @staticmethod
    def available(binary: str = "redis-server") -> bool:
        return shutil.which(binary) is not None

    def start(self, timeout: float = 20.0) -> str:
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="harness-redis-")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        if not _wait_port(self.port, True, timeout):
            self.stop()
            raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.dir}/redis.log)")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        return self.url

    def restart(self, down_s: float) -> tuple[float, float]:
        """Stop redis-server (it writes its data), stay down ``down_s``, start it again."""
        self._terminate()
        down_at = time.time()
        threading.Event().wait(down_s)  # the outage itself: how long Redis stays away
        self.start()
        return down_at, time.time()

    def _terminate(self) -> None:
        if self.proc is not None:
            _stop_child(self.proc)
            self.proc = None

    def stop(self) -> None:
        self._terminate()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""


class ExternalRedis:
    """A Redis the user runs: used as it is, never restarted."""

    kind = "redis"
    restartable = False

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> str:
        return self.url

    def restart(self, down_s: float) -> tuple[float, float]:
        raise RuntimeError("an external Redis cannot be restarted by the harness")

    def stop(self) -> None:
        pass


def main() -> None:
    from fakeredis import TcpFakeServer

    parser = argparse.ArgumentParser(description="fakeredis over TCP on loopback")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = TcpFakeServer(("127.0.0.1", args.port))
    server.daemon_threads = True
    port = server.server_address[1]
    current = [server]
    done = threading.Event()

    def serve(srv) -> None:
        srv.serve_forever(poll_interval=0.05)
        srv.server_close()

    def control() -> None:
        """``restart SECONDS`` on stdin: drop every client, refuse for that long, serve the same data."""
        for line in sys.stdin:
            parts = line.split()
            if parts[:1] != ["restart"]:
                continue
            old = current[0]
            old.shutdown()  # each handler sees the shutdown event, leaves its loop and closes its socket
            print(f"DOWN {time.time()}", flush=True)
            threading.Event().wait(float(parts[1]))  # the outage itself
            new = TcpFakeServer(("127.0.0.1", port))
            new.daemon_threads = True
            new.fake_server = old.fake_server  # the data survives, as with persistence
            current[0] = new
            threading.Thread(target=serve, args=(new,), daemon=True).start()
            print(f"UP {time.time()}", flush=True)
        done.set()

    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=control, daemon=True).start()
    threading.Thread(target=serve, args=(server,), daemon=True).start()
    print(f"READY {port}", flush=True)
    done.wait()
    current[0].shutdown()


if __name__ == "__main__":
    main()
