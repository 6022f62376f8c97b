"""The broker a target is given: a real Redis URL, or an embedded fakeredis TCP server.

``python -m scenarios.harness.broker`` serves fakeredis on a loopback port and
prints ``READY <port>`` once it accepts connections; the harness starts it as
a child process and stops it at the end of the run, so several processes (and
several targets) share one broker.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading


class EmbeddedBroker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scenarios.harness.broker", "--port", "0"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        line = result[0] if result else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"embedded broker did not start (said {line!r})")
        self.url = f"redis://127.0.0.1:{int(line.split()[1])}/0"
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


def main() -> None:
    from fakeredis import TcpFakeServer

    parser = argparse.ArgumentParser(description="fakeredis over TCP on loopback")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = TcpFakeServer(("127.0.0.1", args.port))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
