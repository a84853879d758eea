"""Peer gateways for `make bench-peers`: LiteLLM's proxy (Python) and Portkey's gateway (Node), on demand.

Why this exists: the performance issue compares clexproxy with the two gateways people actually pick instead of it.
Neither may become a dependency of clexproxy, so each is installed into its own folder beside this file the first
time a benchmark asks for it (`.litellm-venv/`, `.portkey/`, both git-ignored), at a pinned version, and started
as a plain subprocess on 127.0.0.1 in front of whatever OpenAI-compatible upstream the benchmark runs.

The harness uses the small API below; the CLI at the bottom is for doing the same by hand:

    python benchmarks/peers/peers.py install litellm
    python benchmarks/peers/peers.py start portkey --port 8788 --upstream http://127.0.0.1:9000/v1
    python benchmarks/peers/peers.py headers portkey --upstream http://127.0.0.1:9000/v1

Everything except `install`, `start`, `stop`, `wait_ready` and `main` is pure (no installs, no processes, no
network), so the unit tests can check the generated configuration, command lines and headers in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent
LITELLM_VENV = PEERS_DIR / ".litellm-venv"
PORTKEY_DIR = PEERS_DIR / ".portkey"
# Generated LiteLLM configs and the peers' logs: one file per (peer, port), so two runs never share one.
RUN_DIR = PEERS_DIR / ".run"
BIND_LOOPBACK = PEERS_DIR / "bind_loopback.cjs"

NAMES = ("litellm", "portkey")
HOST = "127.0.0.1"
# The model id LiteLLM always routes besides the one the benchmark asks for, for hand-run checks.
BENCH_MODEL = "bench-model"
# Any key: the demo upstream and the static nginx answer accept every bearer token.
UPSTREAM_KEY = "x"
# LiteLLM 1.108 refuses to start without a master key. A fixed one is fine for a peer that only listens on loopback,
# and it lets headers() know the key without asking the running process.
LITELLM_MASTER_KEY = "sk-clexproxy-bench-peer-0123456789abcdef"
# A price for the routed model (any non-zero one; see litellm_config for why). Not 1e-07: JSON writes that with an
# exponent, and LiteLLM's YAML 1.1 loader reads `1e-07` as a string.
LITELLM_PRICE_PER_TOKEN = {"input_cost_per_token": 0.0001, "output_cost_per_token": 0.0002}

# Pins. The newest LiteLLM on PyPI (1.110.x) cannot install its `[proxy]` extra here: 1.110 needs a `litellm-proxy`
# wheel and 1.109.x / 1.108.8+ need `litellm-proxy-extras` / `litellm-enterprise` releases that the registry this
# machine reaches does not carry. 1.108.7 is the newest whose extra resolves, and the 1.108 line is what the issue
# measured. Portkey 1.15.2 is the newest 1.x release (the issue measured 1.15). Override either to try another.
LITELLM_VERSION = os.environ.get("PEERS_LITELLM_VERSION", "1.108.7")
PORTKEY_VERSION = os.environ.get("PEERS_PORTKEY_VERSION", "1.15.2")
PORTKEY_PACKAGE = "@portkey-ai/gateway"
# Pinned below what Portkey's own range allows: see portkey_manifest().
HONO_NODE_SERVER_VERSION = "1.14.1"

# LiteLLM imports its whole provider zoo and builds the FastAPI app before uvicorn binds the port: ~10-20 s on a
# quiet 2-core machine, much longer when the machine is busy. Portkey listens within a second.
START_TIMEOUT_S = {"litellm": 180.0, "portkey": 60.0}


class PeerError(RuntimeError):
    """An install or a start that cannot go on; the message says what to do."""


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(NAMES)}")


# ------------------------------------------------------------------------------------------------ pure parts


def base_url(name: str, port: int) -> str:
    """The OpenAI base URL a client uses (it POSTs to `{base_url}/chat/completions`); both peers serve `/v1/...`."""
    _check_name(name)
    return f"http://{HOST}:{port}/v1"


def headers(name: str, upstream_url: str, forward: Sequence[str] = ()) -> dict[str, str]:
    """Request headers a client must add for this peer, besides `Content-Type: application/json`.

    LiteLLM routes by the configured model name and checks Authorization against its master key. Portkey is a
    stateless router: every request names its provider and, for a self-hosted OpenAI-compatible upstream, the
    upstream's base URL (`x-portkey-custom-host`, which must include `/v1`), and Authorization is what it forwards
    to the upstream as the provider key. `forward` lists client headers Portkey should pass on to the upstream
    (e.g. `x-demo-tokens`); by default it passes none of them.
    """
    _check_name(name)
    if name == "litellm":
        return {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"}
    out = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    if name == "portkey":
        out["x-portkey-provider"] = "openai"
        out["x-portkey-custom-host"] = upstream_url.rstrip("/")
        if forward:
            out["x-portkey-forward-headers"] = ",".join(forward)
    return out


def litellm_config(upstream_url: str, model: str, forward_client_headers: bool = False) -> dict[str, Any]:
    """LiteLLM's proxy config: `model` and `bench-model` both go to the OpenAI-compatible upstream, nothing else on.

    Why each setting: `openai/<id>` selects LiteLLM's OpenAI-compatible client and sends `<id>` upstream unchanged;
    `num_retries: 0` so an upstream error counts as an error instead of being retried inside the measurement;
    `disable_hf_tokenizer_download` because for a model id containing `llama-3` LiteLLM otherwise fetches a
    tokenizer from the Hugging Face hub on the first request (offline: five retries, ~20 s stall) and falls back
    to the tiktoken files in its wheel, which this setting selects at once; a per-token price because for a model
    whose cost comes out as $0 LiteLLM runs a "zero cost diagnostic" over its pricing tables after every request
    (a sixth of its CPU in a profile), while a production deployment prices its models, as clexproxy meters them;
    message logging and debug info off because a benchmark peer should do no optional work. There is no
    `database_url`, so no Postgres and no spend logs. Requests are authenticated against `master_key` (this
    version refuses to start without one; `dangerously_permit_weak_or_unset_master_key` would skip the check, and
    clexproxy checks every key, so the peer does too). LiteLLM's telemetry is
    switched off by the environment (see `litellm_env`): this version has no `litellm_settings.telemetry` key.
    `forward_client_headers` makes LiteLLM pass the client's `x-*` headers upstream (the demo upstream's knobs).
    """
    upstream = upstream_url.rstrip("/")
    names = [BENCH_MODEL] if model == BENCH_MODEL else [model, BENCH_MODEL]
    general: dict[str, Any] = {
        "master_key": LITELLM_MASTER_KEY,
        "disable_spend_logs": True,
        "disable_error_logs": True,
    }
    if forward_client_headers:
        general["forward_client_headers_to_llm_api"] = True
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream,
                    "api_key": UPSTREAM_KEY,
                    **LITELLM_PRICE_PER_TOKEN,
                },
            }
            for name in names
        ],
        "litellm_settings": {
            "num_retries": 0,
            "request_timeout": 600,
            "turn_off_message_logging": True,
            "suppress_debug_info": True,
            "json_logs": False,
            "disable_hf_tokenizer_download": True,
        },
        "general_settings": general,
    }


def render_litellm_config(config: Mapping[str, Any]) -> str:
    """The config as LiteLLM's YAML loader reads it. JSON is valid YAML, so no YAML library is needed here (but
    PyYAML follows YAML 1.1, where a float with an exponent and no dot, such as 1e-07, is a string)."""
    return "# generated by benchmarks/peers/peers.py; JSON is valid YAML\n" + json.dumps(config, indent=2) + "\n"


def litellm_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment for LiteLLM's proxy: quiet, offline, no telemetry, no database, no proxies.

    LITELLM_LOCAL_MODEL_COST_MAP: otherwise every start first tries to download the model price map (three tries
    with back-off, seconds of startup) and then falls back to the copy in the wheel anyway. LITELLM_LOG=ERROR also
    sets uvicorn's log level, which turns the per-request access log off. LITELLM_TELEMETRY_DISABLED is the
    documented veto for the proxy's telemetry. DATABASE_URL is removed so a stray one cannot turn Prisma on,
    LITELLM_MASTER_KEY so the config's key is the one in force, HF_HUB_OFFLINE so that no other code path waits
    on the Hugging Face hub, and
    HTTP(S)_PROXY so that loopback upstream calls cannot be routed through a proxy.
    """
    env = _without_proxies(base)
    for name in ("DATABASE_URL", "LITELLM_MASTER_KEY"):
        env.pop(name, None)
    env.update({
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY_DISABLED": "true",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def portkey_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment for Portkey: production mode (no UI, no log-stream page) and no outbound proxy."""
    env = _without_proxies(base)
    env.update({"NODE_ENV": "production", "PEER_BIND_HOST": HOST})
    return env


def _without_proxies(base: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in base.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}


def portkey_entry() -> Path:
    """The gateway's Node entry point: the package's `bin` (build/start-server.js in the 1.x line)."""
    package = PORTKEY_DIR / "node_modules" / PORTKEY_PACKAGE
    try:
        meta = json.loads((package / "package.json").read_text())
        entry = meta.get("bin") or "build/start-server.js"
        if isinstance(entry, dict):
            entry = next(iter(entry.values()))
    except (OSError, ValueError):
        entry = "build/start-server.js"
    return package / str(entry)


def command(name: str, port: int, config_path: Path | None = None, cpu: str | None = None) -> list[str]:
    """The peer's command line. Both listen on 127.0.0.1 only.

    LiteLLM: one uvicorn worker (the default, stated so a changed default cannot skew a run), on the host given.
    Portkey: the entry point only understands `--port=N` (with `=`) and has no host option, so
    bind_loopback.cjs is preloaded to put 127.0.0.1 into its listen call; `--headless` drops the UI routes.
    `cpu` pins the peer with taskset, as the harness pins clexproxy.
    """
    _check_name(name)
    prefix = ["taskset", "-c", cpu] if cpu else []
    if name == "litellm":
        if config_path is None:
            raise ValueError("litellm needs its generated config file")
        return [*prefix, str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config_path), "--host", HOST,
                "--port", str(port), "--num_workers", "1"]
    return [*prefix, "node", "--require", str(BIND_LOOPBACK), str(portkey_entry()), f"--port={port}", "--headless"]


def config_path(name: str, port: int) -> Path:
    """Where start() writes the peer's generated config (LiteLLM only)."""
    return RUN_DIR / f"{name}-{port}.yaml"


def log_path(name: str, port: int) -> Path:
    """Where start() sends the peer's stdout and stderr unless told otherwise."""
    return RUN_DIR / f"{name}-{port}.log"


# ------------------------------------------------------------------------------------------------ installs


def install_spec(name: str) -> str:
    """What an install of this peer consists of: the pip requirement, or the npm manifest (with its overrides)."""
    _check_name(name)
    if name == "litellm":
        return f"litellm[proxy]=={LITELLM_VERSION}"
    return json.dumps(portkey_manifest(), indent=2, sort_keys=True) + "\n"


def portkey_manifest() -> dict[str, Any]:
    """package.json for the private Portkey folder.

    The override: on its streaming path Portkey's gateway appends `x-portkey-*` headers to a Response it built
    with `new Response(stream, upstreamFetchResponse)`. From @hono/node-server 1.14.2 on (Portkey allows ^1.3.3,
    so npm picks the newest 1.19.x), node-server's lightweight Response hands back the upstream fetch Response's
    own Headers for that, which are immutable, so every streamed chat completion answers 500
    `{"status":"failure","message":"Something went wrong"}` (log: `TypeError: immutable` in updateHeaders;
    Portkey-AI/gateway issue 1389). 1.14.1 builds a fresh Response for the headers and streams correctly.
    """
    return {
        "name": "clexproxy-bench-portkey",
        "private": True,
        "dependencies": {PORTKEY_PACKAGE: PORTKEY_VERSION},
        "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
    }


def _stamp(name: str) -> Path:
    return (LITELLM_VENV if name == "litellm" else PORTKEY_DIR) / ".installed"


def installed(name: str) -> bool:
    """True when exactly this install spec finished installing (the stamp is written last, so a broken or
    outdated install is redone)."""
    _check_name(name)
    try:
        return _stamp(name).read_text() == install_spec(name)
    except OSError:
        return False


def install(name: str) -> None:
    """Install the peer at its pinned version into its own folder, unless it already is. Idempotent.

    Raises PeerError with the installer's last output when it fails, so `make bench-peers` says why.
    """
    _check_name(name)
    if installed(name):
        return
    started = time.monotonic()
    if name == "litellm":
        _install_litellm()
    else:
        _install_portkey()
    _stamp(name).write_text(install_spec(name))
    print(f"peers: installed {name} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("WARNING: Location"))
        raise PeerError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail[-3000:]}")


def _install_litellm() -> None:
    """A venv of its own (any Python >= 3.10 will do; the one running this is used) and `litellm[proxy]` pinned."""
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(LITELLM_VENV)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"])


def _install_portkey() -> None:
    """npm into a private folder with its own package.json, so npm never walks up into the repository.

    `--ignore-scripts`: the package's only install script is `patch-package`, and the published package ships no
    patches, so it has nothing to do; npm 11 would skip it anyway and warn, npm 10 would run it.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerError("portkey needs node (>= 18) and npm on PATH: apt-get install -y nodejs npm")
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    (PORTKEY_DIR / "package.json").write_text(json.dumps(portkey_manifest(), indent=2) + "\n")
    _run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--ignore-scripts"], cwd=PORTKEY_DIR)
    if not portkey_entry().exists():
        raise PeerError(f"{PORTKEY_PACKAGE}@{PORTKEY_VERSION} installed but {portkey_entry()} is missing")


# ------------------------------------------------------------------------------------------------ processes


def start(name: str, port: int, upstream_url: str, model: str, *, log: Path | None = None, cpu: str | None = None,
          forward_client_headers: bool = False) -> subprocess.Popen[bytes]:
    """Start the peer on 127.0.0.1:port in front of `upstream_url` (an OpenAI base URL incl. /v1); install first.

    Returns at once: the caller waits for the port (wait_ready, or its own poll). LiteLLM gets its routing from a
    generated config file; Portkey is stateless and gets the upstream from each request's headers (see headers()),
    so `upstream_url` and `model` only shape LiteLLM's config. Output goes to `log` (default log_path()) and never
    to a pipe, which a busy peer would fill and block on.
    """
    _check_name(name)
    install(name)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    if name == "litellm":
        path = config_path(name, port)
        path.write_text(render_litellm_config(litellm_config(upstream_url, model, forward_client_headers)))
        cmd = command(name, port, path, cpu)
        env = litellm_env(os.environ)
    else:
        cmd = command(name, port, None, cpu)
        env = portkey_env(os.environ)
    log = log or log_path(name, port)
    with log.open("wb") as out:
        # cwd: the run folder, so neither peer picks up a .env or config lying in the caller's directory.
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=RUN_DIR)


def wait_ready(name: str, proc: subprocess.Popen[bytes], port: int, timeout: float | None = None) -> float:
    """Block until the peer answers HTTP on its port; return the seconds it took. Raises PeerError on exit/timeout.

    An HTTP answer, not just an open port, because LiteLLM's uvicorn only binds once its app has started, while
    Portkey binds first and prints its banner after; an HTTP answer means both are ready to serve.
    """
    _check_name(name)
    timeout = START_TIMEOUT_S[name] if timeout is None else timeout
    path = "/health/liveliness" if name == "litellm" else "/"
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise PeerError(f"{name} exited with {proc.returncode} before it was ready; see {log_path(name, port)}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:  # refused, reset, timed out, or an HTTP error status while it starts
            pass
        time.sleep(0.1)
    raise PeerError(f"{name} not ready on port {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`: both peers are single processes, so this ends all they started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`install NAME...`, `start NAME --port N --upstream URL [--model M]` (foreground), `headers`, `config`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="install peers at their pinned versions (idempotent)")
    p_install.add_argument("names", nargs="+", choices=NAMES)
    for cmd in ("start", "headers", "config"):
        p = sub.add_parser(cmd)
        p.add_argument("name", choices=NAMES)
        p.add_argument("--port", type=int, default=4000)
        p.add_argument("--upstream", default="http://127.0.0.1:9000/v1", help="OpenAI base URL incl. /v1")
        p.add_argument("--model", default="meta/llama-3.1-8b-instruct")
        p.add_argument("--forward-client-headers", action="store_true", help="LiteLLM: pass x-* headers upstream")
    args = parser.parse_args(argv)

    if args.cmd == "install":
        for name in args.names:
            install(name)
            print(f"{name}: installed ({LITELLM_VERSION if name == 'litellm' else PORTKEY_VERSION})")
        return 0
    if args.cmd == "headers":
        print(json.dumps(headers(args.name, args.upstream), indent=2))
        return 0
    if args.cmd == "config":
        if args.name == "litellm":
            print(render_litellm_config(litellm_config(args.upstream, args.model, args.forward_client_headers)), end="")
        print(" ".join(command(args.name, args.port, config_path(args.name, args.port))))
        return 0

    proc = start(args.name, args.port, args.upstream, args.model, forward_client_headers=args.forward_client_headers)
    try:
        took = wait_ready(args.name, proc, args.port)
        url, log = base_url(args.name, args.port), log_path(args.name, args.port)
        print(f"{args.name} ready in {took:.1f} s at {url}; log {log}")
        print(f"headers: {json.dumps(headers(args.name, args.upstream))}")
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
