"""Settings: one typed, frozen object built from defaults, a TOML file, `CLEX_*` variables and CLI flags.

Precedence, lowest first: the defaults below, the TOML file, the environment, the command line.
Scalar settings live in TOML sections, each a small value object (`settings.upstream.read_timeout`);
a setting keeps one flat name for its flag and variable: `[server] port` is `port` (`CLEX_PORT`),
any other section prefixes its keys, so `[upstream] read_timeout` is `upstream_read_timeout`
(`CLEX_UPSTREAM_READ_TIMEOUT`). The catalog tables (`[tiers]`, `[plans.NAME]`, `[providers.NAME]`,
`[models."ID"]`, `[catalog]`) extend or override the shipped one (`build_catalog`).

Provider credentials are read here too, once, from the variable each provider's `api_key_env`
names: the upstream pool and the startup checks take them from `Settings.credentials`, and a
`Credential` never shows its value (not in `repr`, not in `as_dict`).
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clexproxy.catalog import Catalog, default_catalog
from clexproxy.catalog_tables import CatalogError, build_catalog
from clexproxy.cors import parse_origins

ENV_PREFIX = "CLEX_"
# The tables that are the catalog (`build_catalog` reads them), not scalar settings.
CATALOG_SECTIONS = ("tiers", "plans", "providers", "models", "catalog")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """`[server]`: where the gateway listens, what it stores where, how it logs and stops."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = ".clexproxy-data"
    demo: bool = False
    # The body limit: long conversations and inline images are large.
    max_body_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line
    # The admin API is off unless a token is configured (CLEX_ADMIN_TOKEN); never shown by repr.
    admin_token: str = field(default="", repr=False)
    # Worker processes sharing the port (SO_REUSEPORT); more than one needs `redis.url`, so that
    # N workers never each grant an account its whole budget.
    workers: int = 1
    # SIGTERM/SIGINT: how long calls in flight may finish; then streams end with SPEC's 503 error event and
    # `[DONE]`, unanswered calls get a 503. The supervisor kills a worker still running a few seconds later.
    shutdown_grace_seconds: float = 10.0

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """`[client]`: limits on client connections (`ClientConnection`).

    An idle keep-alive connection is closed after `keepalive_timeout` s; a request head must arrive
    whole within `header_timeout` s of its first byte, and a body may not fall silent for
    `body_timeout` s (408 either way).
    """

    keepalive_timeout: float = 75.0
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    # Open client connections at most; one more is answered 503 and closed. 0: half of what the
    # open-file limit leaves after the reserve (the other half is for upstream connections).
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """`[metrics]`: the Prometheus endpoint and the per-worker snapshots one scrape merges."""

    enabled: bool = True
    # A separate port for /metrics (0: only on the main port).
    port: int = 0
    # Where each worker writes its metrics snapshot so one scrape reports the whole host ("" = this process only).
    dir: str = ""
    flush_seconds: float = 0.5


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """`[upstream]`: the keep-alive pools to providers, their timeouts, retries and fallback."""

    connect_timeout: float = 10.0
    # Longest silence tolerated between two reads from an upstream; no total timeout (long generations).
    read_timeout: float = 300.0
    # Shorter than common upstream idle timeouts so a pooled connection is never reused after the far end closed it.
    keepalive_timeout: float = 15.0
    # Per provider. Streams hold a connection for their whole length: 10,000 slow streams need 10,000.
    max_connections: int = 16384
    retry_backoff: float = 0.05
    # Extra tries of the same deployment list before falling back; 0 means each deployment once.
    retries: int = 0
    # Upstream attempts per call at most, counting retries, every deployment and the fallback's.
    max_attempts: int = 6


@dataclass(frozen=True, slots=True)
class SSESettings:
    """`[sse]`: streamed answers."""

    keepalive_seconds: float = 5.0
    # User-Agent product prefixes (comma-separated, any case) of clients that follow OpenAI's "absent
    # means false": a chat call from one that leaves `stream` out gets JSON, not SSE. The Vercel AI
    # SDK's: `ai-sdk/openai-compatible/1.0.19 ai-sdk/provider-utils/3.0.10 ...`, later `ai-sdk-provider-utils/4.0.15`.
    json_user_agents: str = "ai-sdk/, ai-sdk-"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """`[store]`: how the in-memory state keeps in step with the key store (poll, write-behind)."""

    flush_seconds: float = 0.5
    poll_seconds: float = 0.25


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """`[database]`: PostgreSQL for the key store several hosts share."""

    # postgresql://user:password@host/db; "" = SQLite in the data dir.
    url: str = ""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """`[redis]`: limits shared across processes and hosts (credit leases, per-minute slots)."""

    url: str = ""  # "" = this process alone


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """`[demo]`: the demo upstream and the demo account `serve --demo` provisions."""

    # An already running demo upstream to use instead of starting one in-process.
    upstream_url: str = ""
    account: str = "demo"
    plan: str = "pro"
    # The demo account's owner: the console user `make run` prints a set-password link for.
    owner_email: str = "owner@demo.clexproxy.local"


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """`[cors]`: which other origins' pages may call the bearer-key endpoints from a browser (`CorsPolicy`)."""

    # Comma-separated origins (`https://app.example.com`), or "*" for any: bearer-key calls carry
    # no cookies, so any page may make them with a key it holds. "" turns CORS off.
    allow_origins: str = "*"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """`[console]`: the web pages the gateway serves beside the API (`/`, `/models`).

    On by default, so a new user's browser finds the gateway; off for API-only hosts, whose every
    page is then SPEC's JSON 404. The pages never touch the proxied paths.
    """

    enabled: bool = True
    # The session cookie gets Secure: set it when browsers reach the gateway over HTTPS only.
    secure_cookies: bool = False
    # A session ends this long after its last request, and this long after sign-in whatever happens.
    session_idle_minutes: int = 60
    session_max_hours: int = 12
    # The base URL printed links use ("" = http://<host>:<port> of this server; 127.0.0.1 for 0.0.0.0/::).
    public_url: str = ""
    # How long a set-password link works.
    link_hours: int = 24


@dataclass(frozen=True, slots=True)
class Credential:
    """A provider's API key, read from the variable `variable` when the settings are loaded.

    Its repr (and str) names the variable, never the value, so settings can be printed or logged whole.
    """

    variable: str
    value: str = field(repr=False)


# The TOML sections that hold scalar settings, and the value object each becomes.
SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "client": ClientSettings,
    "metrics": MetricsSettings,
    "upstream": UpstreamSettings,
    "sse": SSESettings,
    "store": StoreSettings,
    "database": DatabaseSettings,
    "redis": RedisSettings,
    "demo": DemoSettings,
    "cors": CorsSettings,
    "console": ConsoleSettings,
}


def setting_name(section: str, key: str) -> str:
    """A setting's one name (its flag's, and `CLEX_<NAME>` in capitals): `[server] port` is `port`,
    `[upstream] read_timeout` is `upstream_read_timeout`."""
    return key if section == "server" else f"{section}_{key}"


# setting name -> (section, field, type)
_SCALARS: dict[str, tuple[str, str, type]] = {
    setting_name(section, name): (section, name, kind)
    for section, cls in SECTIONS.items()
    for name, kind in typing.get_type_hints(cls).items()
}
SETTING_NAMES: tuple[str, ...] = tuple(_SCALARS)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, by section as the TOML file has them; each component is handed its section."""

    server: ServerSettings = field(default_factory=ServerSettings)
    client: ClientSettings = field(default_factory=ClientSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    sse: SSESettings = field(default_factory=SSESettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    catalog: Catalog = field(default_factory=default_catalog)
    # Provider name -> its credential, for the providers whose `api_key_env` variable is set (`load_settings`).
    credentials: Mapping[str, Credential] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        """A setting by its one name (`upstream_read_timeout`)."""
        section, key, _ = _SCALARS[name]
        return getattr(getattr(self, section), key)

    def replace(self, **values: Any) -> Settings:
        """A copy with settings changed by their one names (`upstream_max_connections=...`), or `catalog=`."""
        changes: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for name, value in values.items():
            if name == "catalog":
                top[name] = value
                continue
            if name not in _SCALARS:
                raise ConfigError(f"unknown setting {name!r}")
            section, key, _ = _SCALARS[name]
            changes.setdefault(section, {})[key] = value
        for section, fields in changes.items():
            top[section] = replace(getattr(self, section), **fields)
        return replace(self, **top)


def _coerce(name: str, value: Any) -> Any:
    kind = _SCALARS[name][2]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r} must be {kind.__name__}, got {value!r}") from None


def _flatten(doc: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, table in doc.items():
        if section in CATALOG_SECTIONS:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in table.items():
            name = setting_name(section, key)
            if name not in _SCALARS:
                raise ConfigError(f"unknown setting [{section}] {key}")
            flat[name] = value
    return flat


def _credentials(catalog: Catalog, env: Mapping[str, str]) -> dict[str, Credential]:
    """Each provider's credential from the variable its `api_key_env` names; unset or empty means none."""
    out: dict[str, Credential] = {}
    for name, provider in catalog.providers.items():
        variable = provider.api_key_env
        value = env.get(variable) if variable else None
        if variable and value:
            out[name] = Credential(variable, value)
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the one Settings object; CLI flags come in as `overrides` (None values are ignored).

    `env` (the process environment unless given) supplies the `CLEX_*` settings and the provider credentials.
    """
    env = os.environ if env is None else env
    path = path or env.get("CLEX_CONFIG") or None
    doc: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values = _flatten(doc)
    for name in _SCALARS:
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    coerced = {name: _coerce(name, value) for name, value in values.items()}
    try:
        catalog = build_catalog(doc, default_catalog())
    except CatalogError as exc:
        raise ConfigError(str(exc)) from None
    settings = Settings(catalog=catalog, credentials=_credentials(catalog, env)).replace(**coerced)
    if settings.demo.plan not in settings.catalog.plans:
        raise ConfigError(f"demo_plan {settings.demo.plan!r} is not a plan")
    if settings.server.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be 'text' or 'json', got {settings.server.log_format!r}")
    if settings.server.max_body_bytes < 1024:
        raise ConfigError("max_body_bytes must be at least 1024")
    for name in ("client_keepalive_timeout", "client_header_timeout", "client_body_timeout"):
        if not 0 < settings.value(name) <= 86_400:
            raise ConfigError(f"{name} must be more than 0 and at most 86400 seconds, got {settings.value(name)}")
    if settings.client.max_connections < 0:
        raise ConfigError(f"client_max_connections must be 0 (from the open-file limit) or more, "
                          f"got {settings.client.max_connections}")
    if settings.upstream.max_attempts < 1:
        raise ConfigError(f"upstream_max_attempts must be at least 1, got {settings.upstream.max_attempts}")
    if not 0 <= settings.server.shutdown_grace_seconds <= 3600:
        raise ConfigError(f"shutdown_grace_seconds must be 0 to 3600, got {settings.server.shutdown_grace_seconds}")
    if settings.server.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {settings.server.workers}")
    if settings.server.workers > 1 and not settings.redis.url:
        raise ConfigError(
            f"{settings.server.workers} workers need Redis to share each account's limits "
            "(--redis URL or CLEX_REDIS_URL): "
            "without it every worker would grant the full daily budget and per-minute rate"
        )
    if settings.database.url and not settings.database.url.startswith(("postgresql://", "postgres://")):
        scheme = settings.database.url.split(":")[0]
        raise ConfigError(f"database_url must be a postgresql:// URL, got a {scheme!r} one")
    if settings.redis.url and not settings.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis_url must be a redis://, rediss:// or unix:// URL, got {settings.redis.url!r}")
    try:
        parse_origins(settings.cors.allow_origins)
    except ValueError as exc:
        raise ConfigError(f"cors_allow_origins: {exc}") from None
    return settings


def as_dict(settings: Settings) -> dict[str, Any]:
    """The scalar settings, for a startup log line: never the admin token's value nor a provider credential."""
    out = {name: settings.value(name) for name in SETTING_NAMES}
    out["admin_token"] = "set" if settings.server.admin_token else "unset"
    return out
