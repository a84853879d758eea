"""A throwaway PostgreSQL server for the tests: its own data dir, loopback only, a free port, removed after.

The PostgreSQL store is about several hosts sharing one database, so its tests need the real
server (locks, snapshots, sequences), never a mock. PostgreSQL refuses to run as root; when the
tests do (CI containers), the server runs as an unprivileged system user, `clexpg`, created on
first use. Durability is switched off (`fsync=off`): the data dir is deleted at the end anyway.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.redis_server import free_port

RUN_AS = "clexpg"
SUPERUSER = "postgres"
DATABASE = "clexproxy_test"
REQUIRED = ("initdb", "postgres", "pg_ctl", "pg_isready", "createdb")
START_ATTEMPTS = 3  # a fresh free port each time: another process may take ours between probe and bind
READY_SECONDS = 60.0


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding the server binaries: pg_config's answer first, then the usual install places."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name))
    candidates += [Path(p) for p in reversed(versions)]
    candidates.append(Path("/usr/local/bin"))
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in REQUIRED):
            return directory
    raise PostgresNotInstalled(
        f"PostgreSQL server binaries ({', '.join(REQUIRED)}) not found in "
        f"{', '.join(str(c) for c in candidates)}: the PostgreSQL store tests need a real server. "
        "`make test` installs it (apt-get install postgresql)."
    )


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        pass
    # Not `check=True`: a parallel test process may create it first ("already exists" is fine).
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS],
        capture_output=True, text=True, timeout=60,
    )
    try:
        return pwd.getpwnam(RUN_AS)
    except KeyError:
        raise RuntimeError(f"could not create the system user {RUN_AS!r} to run PostgreSQL: {made.stderr}") from None


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    database: str
    datadir: Path

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


class _Cluster:
    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.log = root / "postgres.log"
        # PG* variables (PGHOST, PGPORT, PGDATA...) must not point the tools at some other server.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"HOME": str(root)}
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            user = _unprivileged_user()
            os.chown(root, user.pw_uid, user.pw_gid)
            # setpriv execs (no fork), so the Popen below is the postmaster itself and can be killed as a last resort.
            self.prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, tool: str, *args: str, as_server: bool = False) -> None:
        cmd = [*(self.prefix if as_server else []), str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root, env=self.env)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def initdb(self) -> None:
        self.run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust", "--no-locale", "-E", "UTF8",
                 "--no-sync", as_server=True)

    def start(self) -> int:
        """Start on a free port; returns the port once the server accepts connections."""
        for _ in range(START_ATTEMPTS):
            port = free_port()
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [*self.prefix, str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(port),
                     "-c", "listen_addresses=127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
                     "-c", "full_page_writes=off"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=self.env, start_new_session=True,
                )
            if self._wait_ready(port):
                return port
        raise RuntimeError(f"postgres did not start in {START_ATTEMPTS} attempts; log:\n{self._log_tail()}")

    def _wait_ready(self, port: int) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # most likely the port was taken: try another
                return False
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "-t", "1"],
                capture_output=True, timeout=30, env=self.env,
            )
            if ready.returncode == 0:
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections in {READY_SECONDS:.0f} s; log:\n{self._log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", as_server=True)
                self.proc.wait(timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no log)"


@contextmanager
def postgres_server(bindir: Path | None = None) -> Iterator[PgServer]:
    """A running server with an empty `clexproxy_test` database; stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="clexpg-"))
    cluster = _Cluster(bindir or find_bindir(), root)
    try:
        cluster.initdb()
        port = cluster.start()
        cluster.run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, DATABASE)
        yield PgServer("127.0.0.1", port, SUPERUSER, DATABASE, cluster.datadir)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
