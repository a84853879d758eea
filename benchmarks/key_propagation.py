"""How long a created or revoked key takes to work or stop on every gateway (issue 12 item 3: "within 1 s").

Why it exists: the console promises that a key made or revoked on its keys page works or stops on
every worker within a second. The writer applies the change at once (`StoreSync.sync_store(force=True)`)
and announces it (`StoreSync.announce_key_change`); the others learn it by their store poll
(`[store] poll_seconds`) or, with Redis, by the announcement. The integration tests prove it arrives;
this puts numbers on how soon, on real processes.

What is measured: `--instances` real `clexproxy serve --demo` processes (one worker each, so each
has a port of its own and can be asked by itself) on free loopback ports, sharing one data dir
(SQLite), with or without Redis (`--mode`). Each round creates a key on the first instance through
the admin API (`POST /admin/accounts/{name}/keys`, which goes through the same `sync_store` and
`announce_key_change` as the console's "Create key") and then asks every instance `GET /api/key`
with it every `--interval` seconds until all answer 200; then revokes it (`DELETE /admin/keys/{id}`)
and asks until all answer 401. The delay is from the admin call's answer (the change committed and
applied by the writer) to the last instance agreeing; so the figures carry up to one `--interval`
of sampling error.

Usage::

    python benchmarks/key_propagation.py [--mode poll|redis|both] [--rounds 20] [--instances 3]
                                         [--interval 0.005] [--redis redis://...] [--json]

`--mode redis` starts a redis-server of its own on a free port unless `--redis URL` names one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, free_port  # noqa: E402  (the repository root is on the path first)

ACCOUNT = "propagation"
GIVE_UP_SECONDS = 10.0  # a change not seen by then is reported as a failure, not waited for


@dataclass
class Instance:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


async def start_instance(work: Path, name: str, admin_token: str, redis_url: str) -> Instance:
    """One `serve --demo` of one worker on the shared data dir; returns once it answers /readyz."""
    port = free_port()
    log = work / f"{name}.log"
    env = {**os.environ, "CLEX_ADMIN_TOKEN": admin_token, "CLEX_METRICS_DIR": str(work / f"metrics-{name}")}
    extra = ["--redis", redis_url] if redis_url else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "clexproxy", "serve", "--demo", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--data-dir", str(work / "data"), *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )
    instance = Instance(proc, port, log)
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()[-2000:]}")
            try:
                async with http.get(instance.url + "/readyz") as resp:
                    if resp.status == 200:
                        return instance
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    instance.stop()
    raise RuntimeError(f"{name} was not ready within 30 s:\n{log.read_text()[-2000:]}")


async def until_all(http: aiohttp.ClientSession, instances: list[Instance], key: str, want: int,
                    interval: float, since: float) -> float:
    """Ask every instance with `key` until each has answered `want`; seconds from `since` to the last one."""

    async def one(instance: Instance) -> float:
        while True:
            async with http.get(instance.url + "/api/key", headers={"Authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                if resp.status == want:
                    return time.monotonic() - since
            await asyncio.sleep(interval)

    return max(await asyncio.wait_for(asyncio.gather(*(one(i) for i in instances)), GIVE_UP_SECONDS))


async def admin(http: aiohttp.ClientSession, instance: Instance, token: str, method: str, path: str,
                body: dict[str, Any] | None = None) -> Any:
    async with http.request(method, instance.url + path, json=body,
                            headers={"Authorization": f"Bearer {token}"}) as resp:
        doc = await resp.json()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {doc}")
        return doc


async def measure(mode: str, rounds: int, count: int, interval: float, redis_url: str) -> dict[str, Any]:
    """Start the instances, run the rounds, stop everything; the delays in ms."""
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="clex-propagation-") as tmp:
        work = Path(tmp)
        instances: list[Instance] = []
        try:
            for n in range(count):  # one after another: each provisions the demo account on first start
                instances.append(await start_instance(work, f"gw{n}", token, redis_url))
            created: list[float] = []
            revoked: list[float] = []
            async with aiohttp.ClientSession() as http:
                await admin(http, instances[0], token, "POST", "/admin/accounts", {"name": ACCOUNT, "plan": "pro"})
                for _ in range(rounds):
                    made = await admin(http, instances[0], token, "POST", f"/admin/accounts/{ACCOUNT}/keys")
                    created.append(await until_all(http, instances, made["key"], 200, interval, time.monotonic()))
                    await admin(http, instances[0], token, "DELETE", f"/admin/keys/{made['id']}")
                    revoked.append(await until_all(http, instances, made["key"], 401, interval, time.monotonic()))
        finally:
            for instance in instances:
                instance.stop()
    return {"mode": mode, "instances": count, "rounds": rounds, "interval_ms": interval * 1000,
            "create_ms": summary(created), "revoke_ms": summary(revoked)}


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"median": round(statistics.median(ms), 1), "max": round(max(ms), 1), "min": round(min(ms), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("poll", "redis", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between asks of one instance")
    parser.add_argument("--redis", default="", help="a running Redis to use (else one is started)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for mode in (("poll", "redis") if args.mode == "both" else (args.mode,)):
        server = None
        redis_url = ""
        try:
            if mode == "redis":
                if args.redis:
                    redis_url = args.redis
                else:
                    server = RedisServer(Path(tempfile.mkdtemp(prefix="clex-propagation-redis-"))).start()
                    redis_url = server.url
            results.append(await measure(mode, args.rounds, args.instances, args.interval, redis_url))
        finally:
            if server is not None:
                server.stop()
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        label = "store poll (SQLite, no Redis)" if r["mode"] == "poll" else "Redis announcement (SQLite + Redis)"
        print(f"{label}: {r['instances']} instances, {r['rounds']} rounds, asked every {r['interval_ms']:g} ms")
        for what in ("create", "revoke"):
            f = r[f"{what}_ms"]
            print(f"  {what:6} -> every instance agrees: median {f['median']:.1f} ms, max {f['max']:.1f} ms "
                  f"(min {f['min']:.1f})")


if __name__ == "__main__":
    asyncio.run(main())
