"""Operations, as an operator meets them: `clexproxy serve` and the CLI as real processes on free loopback ports.

Issue 10, items 10 (one gateway per port), 11 (SIGTERM ends streams as SPEC says, within the
configured grace), 13 (a data dir the store cannot use is one line naming it and the fix) and
20 (a quiet normal start, a warning for a missing provider credential, a `--help` that says
what every option does and which variables have no flag).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from clexproxy.cli import build_parser
from tests.integration.test_serve import KEY_RE, REPO, clean_env, free_port
from tests.redis_server import RedisServer

START_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0  # a process that should exit and does not is failed after this, never timed otherwise
LARGE = "meta/llama-3.3-70b-instruct"


@dataclass
class Proc:
    """One `clexproxy ...` process; stdout and stderr go to one file, read as it grows."""

    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = START_TIMEOUT) -> bool:
        """True once `needle` is in the output; False if the process exited (or `timeout` passed) first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            if self.proc.poll() is not None:
                return needle in self.output()
            time.sleep(0.05)
        return False

    def exit_code(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout} s:\n{self.output()[-3000:]}")

    def key(self) -> str:
        match = KEY_RE.search(self.output())
        assert match, self.output()
        return match.group(1)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    started: list[Proc] = []

    def launcher(name: str, *args: str, env: dict[str, str] | None = None, **popen: object) -> Proc:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(  # type: ignore[call-overload]
            [sys.executable, "-m", "clexproxy", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**clean_env(), **(env or {})}, cwd=REPO, **popen,
        )
        started.append(Proc(proc, log))
        return started[-1]

    try:
        yield launcher
    finally:
        for proc in started:
            proc.stop()


class Launcher(Protocol):
    def __call__(self, name: str, *args: str, env: dict[str, str] | None = None, **popen: object) -> Proc: ...


def get(url: str, key: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_serving(proc: Proc, port: int, workers: int = 1) -> None:
    """Until /readyz answers 200 on `port` and, for a group, every worker reports in the merged metrics."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            pytest.fail(f"the gateway exited:\n{proc.output()[-3000:]}")
        try:
            ready = get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
            if ready and (workers == 1 or f"clexproxy_workers {float(workers)}" in
                          get(f"http://127.0.0.1:{port}/metrics", timeout=2)[1]):
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"not serving on {port} within {START_TIMEOUT} s:\n{proc.output()[-3000:]}")


def chat(port: int, key: str) -> int:
    """One non-streaming call on a new connection (so a port shared by several groups would be split)."""
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "Hi"}], "stream": false}' % LARGE.encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def port_error(port: int) -> str:
    return f"clexproxy: cannot listen on 127.0.0.1:{port}: Address already in use"


def group_args(port: int, data: Path, redis: RedisServer, *extra: str) -> list[str]:
    return ["serve", "--demo", "--port", str(port), "--workers", "2", "--redis", redis.url, "--data-dir", str(data),
            *extra]


def listener(port: int = 0) -> socket.socket:
    """A plain listening socket, as any other program holding a port would (no SO_REUSEPORT)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


# -- 10: one gateway per port ----------------------------------------------------------------------


def test_a_second_worker_group_on_a_taken_port_exits_with_the_port_error(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: the second `serve --workers 2` used to start and take part of the first one's calls (401s)."""
    port = free_port()
    first = launch("first", *group_args(port, tmp_path / "a", redis_server))
    wait_serving(first, port, workers=2)
    key = first.key()

    second = launch("second", *group_args(port, tmp_path / "b", redis_server))
    assert second.exit_code() == 1, second.output()
    assert port_error(port) in second.output()
    assert "Traceback" not in second.output()

    statuses = [chat(port, key) for _ in range(30)]  # new connections: a shared port would split them
    assert statuses == [200] * 30
    assert first.proc.poll() is None


def test_a_single_gateway_and_a_worker_group_never_share_a_port(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: a group on a single gateway's port used to respawn its workers forever without saying why."""
    port = free_port()
    single = launch("single", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "a"))
    wait_serving(single, port)
    group = launch("group", *group_args(port, tmp_path / "b", redis_server))
    assert group.exit_code() == 1, group.output()
    assert port_error(port) in group.output()
    assert "Traceback" not in group.output() and "died at once" not in group.output()
    assert single.stop() == 0

    port = free_port()
    group = launch("group-first", *group_args(port, tmp_path / "c", redis_server))
    wait_serving(group, port, workers=2)
    single = launch("single-second", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert single.exit_code() == 1, single.output()
    assert port_error(port) in single.output()
    assert "Traceback" not in single.output()


def test_a_taken_metrics_port_stops_a_worker_group_with_the_port_error(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 10: the metrics port is claimed like the main one (workers used to die on it and be respawned)."""
    with listener() as held:
        metrics_port = held.getsockname()[1]
        group = launch("group", *group_args(free_port(), tmp_path / "a", redis_server,
                                            "--metrics-port", str(metrics_port)))
        assert group.exit_code() == 1, group.output()
    assert port_error(metrics_port) in group.output()
    assert "Traceback" not in group.output()


def test_a_worker_that_cannot_listen_stops_the_supervisor(tmp_path: Path, redis_server: RedisServer) -> None:
    """Item 10: a worker's bind failure (the port taken after the parent's claim) ends the group with one line.

    The supervisor alone, without the parent's claim, on a port another program holds: before the
    fix its workers died at once and were replaced forever.
    """
    with listener() as held:
        port = held.getsockname()[1]
        script = textwrap.dedent(f"""
            import dataclasses, sys
            from clexproxy.accesslog import configure_logging
            from clexproxy.config import load_settings
            from clexproxy.supervisor import Supervisor, worker_settings
            configure_logging("INFO", "text")
            settings = load_settings(None, env={{}}, overrides={{
                "demo": True, "port": {port}, "workers": 2, "redis_url": {redis_server.url!r},
                "data_dir": {str(tmp_path / "data")!r}}})
            sys.exit(Supervisor(worker_settings(settings), "banner").run())
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(),
                              cwd=REPO, timeout=EXIT_TIMEOUT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert port_error(port) in done.stderr and done.stderr.count("cannot listen") == 1, done.stderr
    assert "died at once" not in done.stdout + done.stderr


# -- 13: a data dir the store cannot use ------------------------------------------------------------


def one_line_error(proc: Proc | subprocess.CompletedProcess[str], path: Path) -> str:
    text = proc.output() if isinstance(proc, Proc) else proc.stdout + proc.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith("clexproxy: ")]
    assert len(errors) == 1, text
    assert str(path) in errors[0] and "--data-dir" in errors[0], text
    return errors[0]


def run_cli(*args: str, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clexproxy", *args], capture_output=True, text=True,
                          env=clean_env(), cwd=REPO, timeout=EXIT_TIMEOUT,
                          preexec_fn=_without_root_overrides if as_user else None)


def test_a_data_dir_that_is_a_file_is_one_line_naming_it(
    launch: Launcher, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Item 13: `serve`, a worker group's parent and the CLI each say what is wrong and how to fix it."""
    data = tmp_path / "data"
    data.write_text("not a directory\n")
    for name, args in [
        ("demo", ["serve", "--demo", "--port", str(free_port()), "--data-dir", str(data)]),
        ("plain", ["serve", "--port", str(free_port()), "--data-dir", str(data)]),
        ("group", group_args(free_port(), data, redis_server)),
    ]:
        proc = launch(name, *args)
        assert proc.exit_code() == 2, proc.output()
        assert "not a directory" in one_line_error(proc, data)
    for args in (["keys", "list"], ["keys", "create", "--account", "a"], ["accounts", "list"]):
        done = run_cli(*args, "--data-dir", str(data))
        assert done.returncode == 2, done.stderr
        one_line_error(done, data)
    assert data.read_text() == "not a directory\n"


def _without_root_overrides() -> None:
    """Root writes through any mode bits (CAP_DAC_OVERRIDE): drop that from the process about to exec, as a user."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, off the bounding set
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP = 24


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only data dir holding a store (made before it turned read-only)."""
    data = tmp_path / "data"
    assert run_cli("keys", "create", "--account", "a", "--data-dir", str(data)).returncode == 0
    for child in data.iterdir():
        child.chmod(0o444)
    data.chmod(0o555)
    try:
        yield data
    finally:
        data.chmod(0o755)


def test_a_read_only_data_dir_is_one_line_naming_it(launch: Launcher, read_only_dir: Path) -> None:
    """Item 13: a read-only data dir (store inside it, or not) is refused before anything starts."""
    data = read_only_dir
    for args in (["serve", "--demo", "--port", str(free_port())], ["serve", "--port", str(free_port())]):
        proc = launch(args[1], *args, "--data-dir", str(data), preexec_fn=_without_root_overrides)
        assert proc.exit_code() == 2, proc.output()
        assert "not writable" in one_line_error(proc, data)
    done = run_cli("keys", "create", "--account", "b", "--data-dir", str(data), as_user=True)
    assert done.returncode == 2, done.stderr
    one_line_error(done, data)
    fresh = data / "inside"
    done = run_cli("keys", "list", "--data-dir", str(fresh), as_user=True)
    assert done.returncode == 2, done.stderr
    assert "cannot create" in one_line_error(done, fresh)


def test_keys_create_with_an_unknown_plan_leaves_no_database(tmp_path: Path) -> None:
    """Item 13: the plan is checked before the store is opened (it used to create the database first)."""
    data = tmp_path / "data"
    done = run_cli("keys", "create", "--account", "a", "--plan", "gold", "--data-dir", str(data))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["clexproxy: unknown plan 'gold'; choose one of: free, starter, pro"]
    assert not (data / "clexproxy.sqlite3").exists()
    done = run_cli("accounts", "set-plan", "a", "gold", "--data-dir", str(data))
    assert done.returncode == 2 and "unknown plan 'gold'" in done.stderr
    assert not (data / "clexproxy.sqlite3").exists()


# -- 20: papercuts ----------------------------------------------------------------------------------


def _low_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))  # caps upstream connections at 2,016


def test_a_normal_start_prints_no_warning(launch: Launcher, tmp_path: Path) -> None:
    """Item 20: the connection cap the open-file limit imposes is information (INFO), not a WARNING."""
    port = free_port()
    proc = launch("demo", "serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                  preexec_fn=_low_open_file_limit)
    wait_serving(proc, port)
    assert proc.stop() == 0
    text = proc.output()
    cap = [line for line in text.splitlines() if "upstream connections capped at 2016" in line]
    assert len(cap) == 1 and " INFO " in cap[0], text
    assert " WARNING " not in text and " ERROR " not in text, text


def test_an_unset_provider_credential_is_a_warning_naming_the_variable(launch: Launcher, tmp_path: Path) -> None:
    """Item 20: once per provider that serves catalog models; not when it is set, never with --demo."""
    port = free_port()
    unset = launch("unset", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    wait_serving(unset, port)
    assert unset.stop() == 0
    warnings = [line for line in unset.output().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, unset.output()
    assert "NVIDIA_API_KEY is not set" in warnings[0] and "'nvidia'" in warnings[0]

    port = free_port()
    credential = "nvapi-" + "s3cret" * 4
    given = launch("set", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                   env={"NVIDIA_API_KEY": credential})
    wait_serving(given, port)
    assert given.stop() == 0
    assert " WARNING " not in given.output() and credential not in given.output()


def _options(parser: argparse.ArgumentParser, path: str = "clexproxy") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_says_what_it_does_and_its_default() -> None:
    """Item 20: no bare option in any subcommand's --help; a flag's help names its default or choices."""
    seen = 0
    for path, action in _options(build_parser()):
        where = f"{path} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and len(action.help) > 10, where
        if action.option_strings and not isinstance(action, argparse._VersionAction):
            assert "default" in action.help or action.required or action.choices, where
        seen += 1
    assert seen > 30


def test_serve_help_names_the_variables_without_a_flag() -> None:
    """Item 20: CLEX_ADMIN_TOKEN had no flag and no mention; the CLEX_<SETTING> rule is spelled out."""
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    text = done.stdout
    assert "CLEX_ADMIN_TOKEN" in text and "CLEX_<SETTING>" in text and "CLEX_SHUTDOWN_GRACE_SECONDS" in text
    assert "NVIDIA_API_KEY" in text
    assert re.search(r"--log-level \{DEBUG,INFO,WARNING,ERROR\}", text)
    assert "default 8080" in text and "default 127.0.0.1" in text
