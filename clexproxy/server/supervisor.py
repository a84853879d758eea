"""`serve --workers N`: a parent that forks N gateway workers, restarts any that dies, and stops them all.

The supervisor is handed each worker's life as a callable (`target(settings, slot)`, as uvicorn's
`Multiprocess` is handed its server's `run`) and knows nothing else of what a worker does:
`clexproxy serve` passes `run_worker`, a test can pass anything.

Each worker binds the port itself with SO_REUSEPORT, so the kernel spreads connections over
the workers evenly (one socket inherited by every worker leaves most connections to whichever
worker wakes first). The workers share nothing in memory: limits go through Redis (the parent
refuses to start more than one worker without it), keys and usage through the store, metrics
through snapshot files in `metrics_dir`, which one scrape of any worker merges.

The parent does the one-time work (the demo key, an empty metrics directory), then only
watches. A worker that dies is replaced; one that keeps dying at once is replaced after a
growing pause, so a broken configuration does not spin the machine. A worker that cannot bind
the port (a target raising `CannotListen`) is not replaced (a replacement would fail the same way,
forever): the parent prints the one-line message a single gateway prints, once however many workers
failed alike, stops the others and exits 1. The parent claimed the port before forking
(`claim_port`), so this takes another program binding it while every worker was down. SIGTERM or
SIGINT is passed to every worker, which stops accepting, finishes its calls within
`shutdown_grace_seconds` and returns its credit leases; what is still running `STOP_MARGIN`
seconds after that is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from clexproxy.config import Settings
from clexproxy.server.ports import EXIT_CANNOT_LISTEN, CannotListen
from clexproxy.signals import STOP_SIGNALS

log = logging.getLogger("clexproxy.server.supervisor")

RESPAWN_PAUSE_MIN, RESPAWN_PAUSE_MAX = 0.5, 10.0  # seconds before replacing a worker that died young, doubling
YOUNG_SECONDS = 5.0  # a worker that dies sooner than this after its start is "dying at once"
POLL_SECONDS = 0.1
# After the grace: a worker cutting its last streams, returning its leases and writing usage behind.
STOP_MARGIN = 5.0


def worker_settings(settings: Settings) -> Settings:
    """The settings every worker runs with: a shared metrics directory, so one scrape covers the host."""
    if settings.metrics.dir:
        return settings
    return settings.replace(metrics_dir=str(Path(settings.server.data_dir) / "metrics"))


class Supervisor:
    """Forks `settings.server.workers` processes, each running `target(settings, slot)`, and keeps them running."""

    def __init__(self, settings: Settings, banner: str, *, target: Callable[[Settings, int], None]) -> None:
        self.settings = settings
        self.banner = banner
        self.target = target
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started at)
        self.stopping = False
        self.cannot_listen = False  # a worker could not bind: stop everything, exit 1
        # Workers write why they cannot listen here; the parent says it once, however many failed alike.
        self._why_r, self._why_w = os.pipe()
        os.set_blocking(self._why_r, False)
        self.restarts = 0
        self._pause = RESPAWN_PAUSE_MIN

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        for slot in range(self.settings.server.workers):
            self._spawn(slot)
        print(self.banner, flush=True)
        log.info("started %d workers: %s", len(self.workers), ", ".join(map(str, self.workers)))
        try:
            while self.workers:
                self._reap()
                if self.stopping:
                    self._stop_all()
                    break
                time.sleep(POLL_SECONDS)
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            os.close(self._why_r)
            os.close(self._why_w)
        return 1 if self.cannot_listen else 0

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _spawn(self, slot: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                self.target(self.settings, slot)
                code = 0
            except CannotListen as exc:
                os.write(self._why_w, f"{exc.code}\n".encode())  # one line, well under PIPE_BUF: written whole
                code = EXIT_CANNOT_LISTEN
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = (slot, time.monotonic())

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            slot, started = self.workers.pop(pid, (-1, 0.0))
            if slot < 0 or self.stopping:
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CANNOT_LISTEN:
                if not self.cannot_listen:  # a replacement would fail alike: say why, once, and stop
                    self.cannot_listen = self.stopping = True
                    print(self._why(), file=sys.stderr)
                continue
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
            if time.monotonic() - started < YOUNG_SECONDS:
                log.error("worker %d (pid %d) died at once (%s); replacing it in %.1f s", slot, pid, how, self._pause)
                time.sleep(self._pause)
                self._pause = min(RESPAWN_PAUSE_MAX, self._pause * 2)
            else:
                log.warning("worker %d (pid %d) died (%s); replacing it", slot, pid, how)
                self._pause = RESPAWN_PAUSE_MIN
            self.restarts += 1
            if not self.stopping:
                self._spawn(slot)

    def _why(self) -> str:
        """The first line a worker wrote before it exited for want of its port (written before its exit)."""
        try:
            said = os.read(self._why_r, 65536).decode(errors="replace")
        except BlockingIOError:
            said = ""
        return said.split("\n", 1)[0] or "clexproxy: a worker could not listen on its port"

    def _stop_all(self) -> None:
        log.info("stopping %d workers", len(self.workers))
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.server.shutdown_grace_seconds + STOP_MARGIN
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(POLL_SECONDS)
        for pid in list(self.workers):
            log.error("worker pid %d did not stop within the grace period; killing it", pid)
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.workers.pop(pid, None)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
