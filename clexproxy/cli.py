"""The `clexproxy` command: serve, keys, accounts, demo-upstream. One flag maps to one setting."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clexproxy import __version__
from clexproxy.config import ConfigError, Settings, load_settings
from clexproxy.store.base import Store, open_store
from clexproxy.store.sqlite import StoreError
from clexproxy.sync.redis import RedisError, RedisSync


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file (also CLEX_CONFIG)")
    parser.add_argument("--data-dir", dest="data_dir", help="where the SQLite store lives (also CLEX_DATA_DIR)")
    parser.add_argument("--database", dest="database_url",
                        help="postgresql://... key store shared by several hosts, not SQLite (also CLEX_DATABASE_URL)")
    parser.add_argument("--redis", dest="redis_url",
                        help="Redis the gateways share: limits across workers and hosts, key changes announced "
                             "(also CLEX_REDIS_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clexproxy", description="OpenAI-compatible LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"clexproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _common(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.add_argument("--demo", action="store_true", default=None,
                       help="route every model to the bundled demo upstream; create a demo key")
    serve.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR")
    serve.add_argument("--log-format", dest="log_format", choices=("text", "json"), help="access/log line format")
    serve.add_argument("--metrics-port", dest="metrics_port", type=int,
                       help="also serve /metrics alone on this port (default: main port only)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1; more need --redis)")

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key (and the account, when new); prints the key once")
    _common(create)
    create.add_argument("--account", required=True)
    create.add_argument("--plan", default="free", help="plan for a new account (default free)")
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    _common(listing)
    listing.add_argument("--account")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    _common(revoke)
    revoke.add_argument("key_id", type=int)

    accounts = sub.add_parser("accounts", help="list accounts, change plans")
    acc_sub = accounts.add_subparsers(dest="action", required=True)
    _common(acc_sub.add_parser("list", help="list accounts"))
    set_plan = acc_sub.add_parser("set-plan", help="move an account to another plan")
    _common(set_plan)
    set_plan.add_argument("name")
    set_plan.add_argument("plan")

    demo = sub.add_parser("demo-upstream", help="run the bundled OpenAI-compatible demo upstream")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=9000)
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": args.data_dir, "database_url": args.database_url, "redis_url": args.redis_url}
    return load_settings(args.config, overrides={**overrides, **extra})


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def _keys(args: argparse.Namespace, settings: Settings, store: Store) -> None:
    plans = settings.catalog.plans
    if args.action == "create":
        if args.plan not in plans:
            raise StoreError(f"unknown plan {args.plan!r}; choose one of: {', '.join(plans)}")
        row, key = await store.create_key(args.account, args.plan, {p.name: p.max_keys for p in plans.values()})
        print(f"Created key {row.id} for account '{row.account}'. It is shown only this once:")
        print(key)
    elif args.action == "list":
        print(f"{'id':>5}  {'account':<20} {'key':<18} {'created':<21} revoked")
        for k in await store.list_keys(args.account):
            print(f"{k.id:>5}  {k.account:<20} {k.hint:<18} {_when(k.created_at):<21} {_when(k.revoked_at)}")
    else:
        row = await store.revoke_key(args.key_id)
        print(f"Revoked key {row.id} ({row.hint}) of account '{row.account}'.")


async def _accounts(args: argparse.Namespace, settings: Settings, store: Store) -> None:
    plans = settings.catalog.plans
    if args.action == "list":
        print(f"{'id':>5}  {'name':<20} {'plan':<10} {'credits/day':>11} {'rpm':>5}  created")
        for a in await store.list_accounts():
            plan = plans.get(a.plan)
            credits = plan.credits_per_day if plan else "?"
            rpm = plan.requests_per_minute if plan else "?"
            print(f"{a.id:>5}  {a.name:<20} {a.plan:<10} {credits:>11} {rpm:>5}  {_when(a.created_at)}")
    else:
        if args.plan not in plans:
            raise StoreError(f"unknown plan {args.plan!r}; choose one of: {', '.join(plans)}")
        row = await store.set_plan(args.name, args.plan)
        print(f"Account '{row.name}' is now on the {row.plan} plan.")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo-upstream":
            from clexproxy.demo_upstream import main as demo_main

            demo_main(["--host", args.host, "--port", str(args.port)])
            return
        if args.command == "serve":
            from clexproxy.server import run

            run(_settings(args, host=args.host, port=args.port, demo=args.demo, log_level=args.log_level,
                          log_format=args.log_format, metrics_port=args.metrics_port, workers=args.workers))
            return
        asyncio.run(_manage(args, _settings(args)))
    except (ConfigError, StoreError) as exc:
        print(f"clexproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _manage(args: argparse.Namespace, settings: Settings) -> None:
    """`keys` and `accounts`: one store call each, on whichever store the gateway uses."""
    store = await open_store(settings.data_dir, settings.database_url)
    try:
        await (_keys if args.command == "keys" else _accounts)(args, settings, store)
    finally:
        await store.close()
    if settings.redis_url and args.action != "list":
        # Gateways poll the store too; the announcement makes a revoke bite everywhere at once.
        sync = RedisSync(settings.redis_url)
        try:
            await sync.announce_key_change()
        except RedisError as exc:
            print(f"clexproxy: could not announce the change on Redis ({exc}); gateways see it at their next poll",
                  file=sys.stderr)
        finally:
            await sync.close()


if __name__ == "__main__":
    main()
