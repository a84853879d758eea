"""One gateway per port: a second instance on a taken port exits with the port error instead of sharing it.

Workers bind the port with SO_REUSEPORT so the kernel spreads connections evenly over them
(`Supervisor`). The kernel lets any socket of the same user that sets SO_REUSEPORT join such a
group, so a second `serve --workers N` on a taken port used to start and take a
share of the first one's traffic (19 of 30 calls were answered by the other deployment). The
process that owns a port (a single gateway, or the parent of N workers) therefore claims it
first, with two guards:

- a probe: the address is bound once without SO_REUSEPORT, then closed, before any worker
  binds it. The kernel refuses that bind when anything listens there, a group of SO_REUSEPORT
  workers or a wildcard address that overlaps ours included, so a taken port is reported with
  the kernel's own reason, by the parent, before a worker is forked.
- a lock: an abstract Unix socket named after the address, bound for the life of the group and
  inherited by every worker (fork keeps it open in each). It covers what the probe cannot: two
  instances started at the same moment (both probes pass before either group binds), and the
  moment every worker of a group is dead and being replaced, when the port is briefly free and
  the replacements would otherwise join whoever took it. The abstract namespace belongs to the
  network namespace, as TCP ports do (containers with their own network do not collide,
  `--network host` ones do); it needs no file, so no data dir and no /tmp (which differ between
  instances, and between systemd units with PrivateTmp); and the kernel releases it when the
  last process holding it exits, SIGKILL included. Off Linux a `flock` on a file in the temp
  directory stands in.

Rejected: one listening socket bound by the parent and inherited by every worker (the kernel
then wakes whichever worker is first, and most connections land on one worker: the reason for
SO_REUSEPORT); the parent keeping a socket of its own in the group (it would be handed a share
of the connections, which it never accepts).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import tempfile
from typing import IO

EXIT_CANNOT_LISTEN = 3  # a worker's exit status when it could not bind: the supervisor stops instead of respawning


class CannotListen(SystemExit):
    """The one-line message a person can act on; exits the process (status 1) like any SystemExit with text."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"clexproxy: cannot listen on {host}:{port}: {reason}")


class PortClaim:
    """The lock on one address, held until `release` or the exit of the last process that inherited it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._lock: socket.socket | IO[bytes] | None = _lock(host, port)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def claim_port(host: str, port: int) -> PortClaim | None:
    """Lock `host:port` for this process and its children and check nothing listens there yet, or raise CannotListen.

    A single gateway binds without SO_REUSEPORT, so its own bind would catch a taken port too,
    but only after its startup; the probe says it first, in the same words. Port 0 (any free
    port, or no metrics port) is never shared: nothing to claim.
    """
    if not port:
        return None
    try:
        claim = PortClaim(host, port)
    except OSError as exc:  # held by another gateway: what its own bind would have said
        taken = exc.errno in (errno.EADDRINUSE, errno.EAGAIN, errno.EWOULDBLOCK)
        raise CannotListen(host, port, os.strerror(errno.EADDRINUSE) if taken else str(exc)) from None
    try:
        _probe(host, port)
    except BaseException:
        claim.release()
        raise
    return claim


def _lock(host: str, port: int) -> socket.socket | IO[bytes]:
    name = f"clexproxy-port-{host}-{port}"
    if sys.platform.startswith("linux"):
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind("\0" + name)
        except BaseException:
            lock.close()
            raise
        return lock
    import fcntl

    path = os.path.join(tempfile.gettempdir(), name.replace(":", "_") + ".lock")
    fh = open(path, "ab")  # held open for the life of the claim
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        fh.close()
        raise
    return fh


def _probe(host: str, port: int) -> None:
    """Bind every address `host` resolves to, as the gateway will but without SO_REUSEPORT, and let go."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(host, port, str(exc.strerror)) from None
    for family, kind, proto, _, address in {info for info in infos}:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway's own bind
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):  # as asyncio's create_server
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise CannotListen(host, port, exc.strerror or str(exc)) from None
