"""A real redis-server for the tests: started on a free loopback port, stopped (or restarted) on demand.

Redis is what the scale-out tests are about, so they talk to the real thing, with the
persistence `deploy/` configures (AOF, fsync on every write): a restart keeps every lease and
counter, which is what "Redis restarted mid-flood: nothing lost" relies on.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _below_ephemeral() -> range:
    """Ports no outgoing connection is given: those under the kernel's ephemeral range (32768 up, by default)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return range(10_000, max(11_000, low))


def free_port() -> int:
    """A loopback port that is free now, for a server that binds it later (often in another process).

    It is drawn from under the ephemeral range: a port the kernel hands out (bind to port 0) can
    meanwhile become the local end of any outgoing connection (a worker's to Redis, say), and the
    server's bind then fails with "Address already in use". A port in TIME_WAIT fails the probe.
    """
    ports = _below_ephemeral()
    for _ in range(500):
        port = random.choice(ports)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in {ports}")


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; `make test` installs it (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        """SIGTERM: Redis finishes its AOF and exits, as an orderly restart would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash; with `appendfsync always` every acknowledged write is still on disk."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
