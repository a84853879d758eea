"""The `clexproxy` command: serve, keys, accounts, users, demo-upstream. One flag maps to one setting.

`users create` and `users reset-password` print a one-time set-password link (what a new console
user opens first); the link is the only way a password is set, so no password ever passes through
a command line, a shell history or a process list.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clexproxy import __version__
from clexproxy.config import ENV_PREFIX, SETTING_NAMES, ConfigError, Settings, load_settings
from clexproxy.store import open_store
from clexproxy.store.base import ROLES, Store, StoreError, UnknownPlan, UserNotFound
from clexproxy.sync.redis import RedisError, RedisSync

DEFAULTS = Settings()
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PLANS = ", ".join(DEFAULTS.catalog.plans)
# The settings `serve` has a flag for; every other one comes from the config file or CLEX_<SETTING>.
SERVE_FLAGS = ("host", "port", "demo", "log_level", "log_format", "metrics_port", "workers",
               "data_dir", "database_url", "redis_url")


def _serve_epilog() -> str:
    """The variables `serve` reads that no flag mentions: the admin token, the CLEX_<SETTING> rule, credentials."""
    flagless = [name for name in SETTING_NAMES if name not in SERVE_FLAGS]
    indent = " " * 24
    names = textwrap.fill(", ".join(ENV_PREFIX + name.upper() for name in flagless), width=100,
                          initial_indent=indent, subsequent_indent=indent)
    credentials = sorted({p.api_key_env for p in DEFAULTS.catalog.providers.values() if p.api_key_env})
    return (
        "environment:\n"
        "  CLEX_ADMIN_TOKEN      turns the admin API on (Authorization: Bearer <token>); unset, it is off\n"
        "  CLEX_CONFIG           the config file, as --config\n"
        "  CLEX_<SETTING>        any setting, by its name in capitals (CLEX_PORT, CLEX_UPSTREAM_READ_TIMEOUT);\n"
        "                        a flag beats the variable, the variable beats the config file, and\n"
        "                        deploy/clexproxy.example.toml documents each one. The settings without a flag:\n"
        f"{names}\n"
        f"  {' '.join(credentials):<20}  provider credentials, as the catalog names them; --demo needs none"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="TOML config file (also CLEX_CONFIG; default: none, the built-in settings)")
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                        help=f"directory of the SQLite key store and the demo key (also CLEX_DATA_DIR; "
                             f"default {DEFAULTS.server.data_dir})")
    parser.add_argument("--database", dest="database_url", metavar="URL",
                        help="postgresql://... key store shared by several hosts, instead of SQLite in the data dir "
                             "(also CLEX_DATABASE_URL; default: SQLite)")
    parser.add_argument("--redis", dest="redis_url", metavar="URL",
                        help="Redis the gateways share: limits across workers and hosts, key changes announced "
                             "(also CLEX_REDIS_URL; default: none, limits kept in this process)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clexproxy", description="OpenAI-compatible LLM API gateway.")
    parser.add_argument("--version", action="version", version=f"clexproxy {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM or SIGINT.",
                           epilog=_serve_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(serve)
    serve.add_argument("--host", help=f"bind address; 0.0.0.0 for every interface (also CLEX_HOST; "
                                      f"default {DEFAULTS.server.host})")
    serve.add_argument("--port", type=int, help=f"TCP port (also CLEX_PORT; default {DEFAULTS.server.port})")
    serve.add_argument("--demo", action="store_true", default=None,
                       help="route every model to the bundled demo upstream and create a demo key: no provider "
                            "keys or network needed (also CLEX_DEMO; default off)")
    serve.add_argument("--log-level", dest="log_level", type=str.upper, choices=LOG_LEVELS,
                       help=f"least severe log line written (also CLEX_LOG_LEVEL; default {DEFAULTS.server.log_level})")
    serve.add_argument("--log-format", dest="log_format", choices=("text", "json"),
                       help="key=value text lines, or one JSON object per line for log shippers "
                            f"(also CLEX_LOG_FORMAT; default {DEFAULTS.server.log_format})")
    serve.add_argument("--metrics-port", dest="metrics_port", type=int, metavar="PORT",
                       help="also serve /metrics alone on this port (also CLEX_METRICS_PORT; "
                            "default 0: the main port only)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="worker processes sharing the port; more than 1 needs --redis "
                            f"(also CLEX_WORKERS; default {DEFAULTS.server.workers})")

    keys = sub.add_parser("keys", help="create, list and revoke API keys",
                          description="Create, list and revoke API keys.")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key (and the account, when new); prints the key once")
    _common(create)
    create.add_argument("--account", required=True, metavar="NAME",
                        help="account the key belongs to; created on --plan when new (required)")
    create.add_argument("--plan", default="free",
                        help=f"plan of a new account: {PLANS} or one of the config file's (default free; an "
                             "existing account keeps its plan)")
    listing = keys_sub.add_parser("list", help="list keys (never the keys themselves)")
    _common(listing)
    listing.add_argument("--account", metavar="NAME", help="only this account's keys (default: every account)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    _common(revoke)
    revoke.add_argument("key_id", type=int, help="the key's id, as `keys list` shows it")

    accounts = sub.add_parser("accounts", help="list accounts, change plans",
                              description="List accounts, change plans.")
    acc_sub = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    _common(acc_sub.add_parser("list", help="list accounts"))
    set_plan = acc_sub.add_parser("set-plan", help="move an account to another plan")
    _common(set_plan)
    set_plan.add_argument("name", help="the account's name")
    set_plan.add_argument("plan", help=f"the plan to move it to: {PLANS} or one of the config file's")

    users = sub.add_parser("users", help="console users: create, reset a password, list",
                           description="Console users. create and reset-password print a one-time link to set "
                                       "a password (it expires after [console] link_hours).")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    user_create = users_sub.add_parser("create", help="create a console user; prints their set-password link")
    _common(user_create)
    user_create.add_argument("--email", required=True, help="their email, which they sign in with (required)")
    user_create.add_argument("--role", default="owner", choices=ROLES,
                             help="owner (manages the account's keys), member (sees them) or operator (every "
                                  "account; no --account) (default owner)")
    user_create.add_argument("--account", metavar="NAME",
                             help="the account they belong to: required for owner and member, left out for "
                                  "operator (default none)")
    reset = users_sub.add_parser("reset-password", help="print a new set-password link (earlier ones stop working)")
    _common(reset)
    reset.add_argument("--email", required=True, help="the user's email (required)")
    user_list = users_sub.add_parser("list", help="list console users")
    _common(user_list)
    user_list.add_argument("--account", metavar="NAME", help="only this account's users (default: every user)")

    demo = sub.add_parser("demo-upstream", help="run the bundled OpenAI-compatible demo upstream",
                          description="Run the bundled OpenAI-compatible demo upstream (what --demo uses).")
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=9000, help="port to bind; 0 picks a free one (default 9000)")
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {"data_dir": args.data_dir, "database_url": args.database_url, "redis_url": args.redis_url}
    return load_settings(args.config, overrides={**overrides, **extra})


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _check_plan(args: argparse.Namespace, settings: Settings) -> None:
    """Refuse an unknown plan before the store is opened: a refused command leaves no database behind."""
    plans = settings.catalog.plans
    wants_plan = (args.command, args.action) in (("keys", "create"), ("accounts", "set-plan"))
    if wants_plan and args.plan not in plans:
        raise UnknownPlan(f"unknown plan {args.plan!r}; choose one of: {', '.join(plans)}")


async def _keys(args: argparse.Namespace, settings: Settings, store: Store) -> None:
    plans = settings.catalog.plans
    if args.action == "create":
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
        row = await store.set_plan(args.name, args.plan)
        print(f"Account '{row.name}' is now on the {row.plan} plan.")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo-upstream":
            from clexproxy.demo.upstream import main as demo_main

            demo_main(["--host", args.host, "--port", str(args.port)])
            return
        if args.command == "serve":
            from clexproxy.server.worker import run

            run(_settings(args, host=args.host, port=args.port, demo=args.demo, log_level=args.log_level,
                          log_format=args.log_format, metrics_port=args.metrics_port, workers=args.workers))
            return
        asyncio.run(_manage(args, _settings(args)))
    except (ConfigError, StoreError) as exc:
        print(f"clexproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_user(args: argparse.Namespace) -> None:
    """Refuse a bad email or a role without its account (or an operator with one) before the store is opened."""
    from clexproxy.web.session import email_problem

    problem = email_problem(args.email.strip())
    if problem:
        raise StoreError(problem)
    if args.action == "create" and (args.role == "operator") == (args.account is not None):
        need = "an operator belongs to no account: leave out --account" if args.role == "operator" else (
            f"an {args.role} belongs to an account: give --account NAME")
        raise StoreError(need)


async def _users(args: argparse.Namespace, settings: Settings, store: Store) -> None:
    from clexproxy.web.session import issue_link, public_url

    if args.action == "list":
        print(f"{'id':>5}  {'email':<32} {'role':<9} {'account':<20} {'password':<9} created")
        for u in await store.list_users(args.account):
            print(f"{u.id:>5}  {u.email:<32} {u.role:<9} {u.account or '-':<20} "
                  f"{'set' if u.password_set else 'not set':<9} {_when(u.created_at)}")
        return
    if args.action == "create":
        user = await store.create_user(args.email.strip(), args.role, args.account)
        where = f" of account '{user.account}'" if user.account else ""
        print(f"Created {user.role} {user.email}{where} (user {user.id}).")
    else:
        found = await store.user_by_email(args.email.strip())
        if found is None:
            raise UserNotFound(f"no user with email {args.email.strip().lower()!r}")
        user = found[0]
    link, expires = await issue_link(store, user.id, public_url(settings), settings.console.link_hours, time.time())
    print(f"Set-password link for {user.email} (one use; expires {_when(expires)}):")
    print(link)


async def _manage(args: argparse.Namespace, settings: Settings) -> None:
    """`keys`, `accounts` and `users`: one store call or two, on whichever store the gateway uses."""
    _check_plan(args, settings)
    if args.command == "users" and args.action != "list":
        _check_user(args)
    store = await open_store(settings.server.data_dir, settings.database.url)
    run = {"keys": _keys, "accounts": _accounts, "users": _users}[args.command]
    try:
        await run(args, settings, store)
    finally:
        await store.close()
    if settings.redis.url and args.action != "list" and args.command != "users":
        # Gateways poll the store too; the announcement makes a revoke bite everywhere at once.
        sync = RedisSync(settings.redis.url)
        try:
            await sync.announce_key_change()
        except RedisError as exc:
            print(f"clexproxy: could not announce the change on Redis ({exc}); gateways see it at their next poll",
                  file=sys.stderr)
        finally:
            await sync.close()


if __name__ == "__main__":
    main()
