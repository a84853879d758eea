"""The shipped example config must load and stay complete: users copy it, so a stale key is a startup error for them.

Every `[section] key` in it must land on a real Settings field with the value written there, every scalar
setting must appear in it with its `CLEX_*` variable named, and the catalog examples must build.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from clexproxy.config import CATALOG_SECTIONS, ENV_PREFIX, SETTING_NAMES, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "clexproxy.example.toml"
SCALARS = list(SETTING_NAMES)


def _doc() -> dict[str, Any]:
    with EXAMPLE.open("rb") as fh:
        return tomllib.load(fh)


def _scalar_items(doc: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(section, key, value) for the scalar sections, named by the same rule as `config._flatten`."""
    return [
        (section, key, value)
        for section, table in doc.items()
        if section not in CATALOG_SECTIONS
        for key, value in table.items()
    ]


def _field_name(section: str, key: str) -> str:
    return key if section == "server" else f"{section}_{key}"


def test_example_loads() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert isinstance(settings, Settings)


def test_every_scalar_key_maps_to_a_field_and_round_trips() -> None:
    settings = load_settings(EXAMPLE, env={})
    items = _scalar_items(_doc())
    assert items, "the example has no scalar settings"
    for section, key, value in items:
        name = _field_name(section, key)
        assert name in SCALARS, f"[{section}] {key} maps to no Settings field ({name})"
        assert settings.value(name) == value, f"[{section}] {key} = {value!r} did not reach settings.{name}"


def test_example_covers_every_scalar_setting_with_its_default_and_env_var() -> None:
    documented = {_field_name(section, key): value for section, key, value in _scalar_items(_doc())}
    defaults = Settings()
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in SCALARS:
        assert name in documented, f"Settings.{name} is missing from {EXAMPLE.name}"
        assert documented[name] == defaults.value(name), f"{EXAMPLE.name} shows {name} = {documented[name]!r}"
        assert ENV_PREFIX + name.upper() in text, f"{EXAMPLE.name} does not name {ENV_PREFIX + name.upper()}"


def test_catalog_examples() -> None:
    catalog = load_settings(EXAMPLE, env={}).catalog
    assert catalog.providers["nvidia"].base_url == "https://integrate.api.nvidia.com/v1"
    assert catalog.providers["nvidia"].api_key_env == "NVIDIA_API_KEY"
    assert catalog.providers["vllm"].api_key_env == "VLLM_API_KEY"
    assert catalog.providers["ollama"].base_url == "http://127.0.0.1:11434/v1"
    llama = catalog.models["meta/llama-3.1-8b-instruct"]
    assert [d.provider for d in llama.deployments] == ["vllm", "nvidia"]
    assert catalog.models["ollama/llama3.2-3b"].deployments[0].model == "llama3.2:3b"
    assert catalog.plans["pro"].requests_per_minute == 200
    assert catalog.tiers["premium"] == 5
    assert catalog.fallback_model == "meta/llama-3.1-8b-instruct"
    assert catalog.default_credits == 1
    assert catalog.cost("meta/llama-3.3-70b-instruct") == 3  # shipped models not mentioned are kept


@pytest.mark.parametrize(
    ("env", "name", "expected"),
    [({"CLEX_PORT": "9191"}, "port", 9191), ({"CLEX_UPSTREAM_READ_TIMEOUT": "42"}, "upstream_read_timeout", 42.0)],
)
def test_environment_beats_the_file(env: dict[str, str], name: str, expected: object) -> None:
    """The precedence the example's header promises."""
    assert load_settings(EXAMPLE, env=env).value(name) == expected
