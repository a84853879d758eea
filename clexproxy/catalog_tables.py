"""The catalog tables of a settings file: how `[tiers]`, `[plans.NAME]`, `[providers.NAME]`, `[models."ID"]`
and `[catalog]` extend or override the shipped catalog.

A table changes only the keys it gives; a new plan, provider or model must give what has no sane
default. The result is checked whole (every tier, kind, provider and the fallback model known),
and anything that cannot be used is a `CatalogError` whose message names the table;
`load_settings` reports it as a `ConfigError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from clexproxy.catalog import PROVIDER_FORMATS, Catalog, Deployment, Model, Plan, Provider

# A use case is a few words in a table cell, not a description: longer text is a mistake to report.
USE_CASE_LIMIT = 120


class CatalogError(ValueError):
    """A catalog table that cannot be used; the message names it."""


@contextmanager
def _entry(where: str) -> Iterator[None]:
    """Turn a malformed catalog table into a CatalogError that names it."""
    try:
        yield
    except CatalogError as exc:
        message = str(exc)
        raise CatalogError(message if message.startswith(where) else f"{where}: {message}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CatalogError(f"{where} is malformed: {type(exc).__name__}: {exc}") from None


def _int(table: Mapping[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"{key} must be an integer, got {value!r}")
    return value


def _bool(table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise CatalogError(f"{key} must be true or false, got {value!r}")
    return value


def _text(table: Mapping[str, Any], key: str, default: str, limit: int) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise CatalogError(f"{key} must be a string, got {value!r}")
    value = " ".join(value.split())  # one line on the Models page, whatever the TOML's layout
    if len(value) > limit:
        raise CatalogError(f"{key} must be at most {limit} characters, got {len(value)}")
    return value


def _plan(name: str, p: Mapping[str, Any], old: Plan | None) -> Plan:
    """A plan; a new one must state every number (a silent 0 would refuse every call on it)."""
    numbers = ("credits_per_day", "requests_per_minute", "max_keys")
    if old is None:
        missing = [n for n in numbers if n not in p]
        if missing:
            raise CatalogError(f"[plans.{name}] needs {', '.join(missing)}")
    return Plan(
        name,
        _int(p, "credits_per_day", old.credits_per_day if old else 0),
        _int(p, "requests_per_minute", old.requests_per_minute if old else 0),
        _int(p, "max_keys", old.max_keys if old else 0),
        _bool(p, "fail_open", old.fail_open if old else False),
        _bool(p, "default_stream", old.default_stream if old else True),
    )


def _provider(name: str, p: Mapping[str, Any]) -> Provider:
    if "base_url" not in p:
        raise CatalogError(f"[providers.{name}] needs base_url")
    if p.get("format", "openai") not in PROVIDER_FORMATS:
        raise CatalogError(f"[providers.{name}] format must be one of {', '.join(PROVIDER_FORMATS)}, "
                           f"got {p['format']!r}")
    return Provider(
        name,
        str(p["base_url"]).rstrip("/"),
        api_key_env=p.get("api_key_env"),
        format=p.get("format", "openai"),
        pass_headers=tuple(str(h).lower() for h in p.get("pass_headers", ())),
    )


def _model(mid: str, m: Mapping[str, Any], old: Model | None) -> Model:
    deployments: tuple[Deployment, ...]
    if "deployments" in m:
        deployments = tuple(Deployment(str(d["provider"]), str(d.get("model", mid))) for d in m["deployments"])
    elif old is not None:
        deployments = old.deployments
    else:
        raise CatalogError(f'[models."{mid}"] needs deployments')
    return Model(
        mid,
        str(m.get("tier", old.tier if old else "cheap")),
        _int(m, "context_length", old.context_length if old else 8_192),
        _int(m, "max_output_tokens", old.max_output_tokens if old else 4_096),
        deployments,
        m.get("kind", old.kind if old else "chat"),
        sampling_defaults=_bool(m, "sampling_defaults", old.sampling_defaults if old else True),
        use_case=_text(m, "use_case", old.use_case if old else "", USE_CASE_LIMIT),
        completions=_bool(m, "completions", old.completions if old else False),
    )


def build_catalog(doc: Mapping[str, Any], base: Catalog) -> Catalog:
    """`base` extended or overridden by the catalog tables of `doc` (a parsed TOML file), then checked whole."""
    tiers = dict(base.tiers)
    with _entry("[tiers]"):
        table = doc.get("tiers", {})
        tiers.update({str(k): _int(table, k, 0) for k in table})
    plans = dict(base.plans)
    for name, p in doc.get("plans", {}).items():
        with _entry(f"[plans.{name}]"):
            plans[name] = _plan(name, p, plans.get(name))
    providers = dict(base.providers)
    for name, p in doc.get("providers", {}).items():
        with _entry(f"[providers.{name}]"):
            providers[name] = _provider(name, p)
    models = dict(base.models)
    for mid, m in doc.get("models", {}).items():
        with _entry(f'[models."{mid}"]'):
            models[mid] = _model(mid, m, models.get(mid))
    with _entry("[catalog]"):
        extra = doc.get("catalog", {})
        catalog = Catalog(
            tiers=tiers,
            plans=plans,
            providers=providers,
            models=models,
            default_credits=_int(extra, "default_credits", base.default_credits),
            fallback_model=extra.get("fallback_model", base.fallback_model) or None,
        )
    _check_catalog(catalog)
    return catalog


def _check_catalog(catalog: Catalog) -> None:
    for model in catalog.models.values():
        if model.tier not in catalog.tiers:
            raise CatalogError(f"model {model.id!r} has unknown tier {model.tier!r}")
        if model.kind not in ("chat", "embedding"):
            raise CatalogError(f"model {model.id!r} has unknown kind {model.kind!r}")
        for dep in model.deployments:
            if dep.provider not in catalog.providers:
                raise CatalogError(f"model {model.id!r} uses unknown provider {dep.provider!r}")
            if model.completions and catalog.providers[dep.provider].format != "openai":
                raise CatalogError(f"model {model.id!r} serves legacy completions, but its provider "
                                   f"{dep.provider!r} does not speak OpenAI's format")
        if model.completions and model.kind != "chat":
            raise CatalogError(f"model {model.id!r} serves legacy completions but is not a chat model")
    if catalog.fallback_model and catalog.fallback_model not in catalog.models:
        raise CatalogError(f"fallback model {catalog.fallback_model!r} is not in the catalog")
