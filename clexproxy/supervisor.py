"""`serve --workers N`: a parent that forks N gateway workers, restarts any that dies, and stops them all.

Each worker binds the port itself with SO_REUSEPORT, so the kernel spreads connections over
the workers evenly (one socket inherited by every worker leaves most connections to whichever
worker wakes first). The workers share nothing in memory: limits go through Redis (the parent
refuses to start more than one worker without it), keys and usage through the store, metrics
through snapshot files in `metrics_dir`, which one scrape of any worker merges.

The parent does the one-time work (the demo key, an empty metrics directory), then only
watches. A worker that dies is replaced; one that keeps dying at once is replaced after a
growing pause, so a broken configuration does not spin the machine. SIGTERM or SIGINT is
passed to every worker, which stops accepting, finishes its calls within the grace period and
returns its credit leases; what is still running after that is killed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from clexproxy.config import Settings
from clexproxy.signals import STOP_SIGNALS

log = logging.getLogger("clexproxy.supervisor")

RESPAWN_PAUSE_MIN, RESPAWN_PAUSE_MAX = 0.5, 10.0  # seconds before replacing a worker that died young, doubling
YOUNG_SECONDS = 5.0  # a worker that dies sooner than this after its start is "dying at once"
POLL_SECONDS = 0.1


def worker_settings(settings: Settings) -> Settings:
    """The settings every worker runs with: a shared metrics directory, so one scrape covers the host."""
    if settings.metrics_dir:
        return settings
    return dataclasses.replace(settings, metrics_dir=str(Path(settings.data_dir) / "metrics"))


class Supervisor:
    def __init__(self, settings: Settings, banner: str) -> None:
        self.settings = settings
        self.banner = banner
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started at)
        self.stopping = False
        self.restarts = 0
        self._pause = RESPAWN_PAUSE_MIN

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_stop)
        for slot in range(self.settings.workers):
            self._spawn(slot)
        print(self.banner, flush=True)
        log.info("started %d workers: %s", len(self.workers), ", ".join(map(str, self.workers)))
        try:
            while self.workers:
                self._reap()
                if self.stopping:
                    return self._stop_all()
                time.sleep(POLL_SECONDS)
        finally:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        return 0

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
                from clexproxy.server import run_worker

                run_worker(self.settings, slot)
                code = 0
            except SystemExit as exc:
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

    def _stop_all(self) -> int:
        log.info("stopping %d workers", len(self.workers))
        for pid in self.workers:
            _signal(pid, signal.SIGTERM)
        from clexproxy.server import SHUTDOWN_GRACE_SECONDS

        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS + 5.0
        while self.workers and time.monotonic() < deadline:
            self._reap()
            time.sleep(POLL_SECONDS)
        for pid in list(self.workers):
            log.error("worker pid %d did not stop within the grace period; killing it", pid)
            _signal(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.workers.pop(pid, None)
        return 0


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
