"""Settings: SPEC's defaults, then TOML, then CLEX_* variables, then CLI flags, and ConfigErrors that name the setting.

Every call passes `env` explicitly so the developer's own environment (CLEX_CONFIG, CLEX_PORT...) never leaks in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clexproxy.config import ConfigError, Settings, as_dict, load_settings

MIB = 1024 * 1024


def write(tmp_path: Path, text: str, name: str = "clex.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def defaults() -> Settings:
    return load_settings(env={})


# defaults ---------------------------------------------------------------------------------------


def test_scalar_defaults() -> None:
    """SPEC: a 16 MiB body limit; the admin API is off unless a token is configured."""
    s = defaults()
    assert s.server.max_body_bytes == 16 * MIB
    assert s.server.admin_token == ""
    assert s.server.demo is False
    assert s.server.host == "127.0.0.1"
    assert s.server.port == 8080


def test_default_plans_match_spec() -> None:
    plans = defaults().catalog.plans
    got = {name: (p.credits_per_day, p.requests_per_minute, p.max_keys) for name, p in plans.items()}
    assert got == {"free": (100, 40, 1), "starter": (500, 80, 5), "pro": (2000, 200, 20)}
    assert all(p.name == name for name, p in plans.items())


def test_default_tiers_match_spec() -> None:
    assert dict(defaults().catalog.tiers) == {"cheap": 1, "standard": 2, "large": 3, "premium": 5}


def test_default_catalog_has_spec_models() -> None:
    """The shipped catalog is SPEC's table: 20 models, each priced by its tier, routed to NVIDIA."""
    catalog = defaults().catalog
    expected = {
        "cheap": {
            "google/gemma-3n-e4b-it",
            "microsoft/phi-4-mini-instruct",
            "mistralai/mistral-small-24b-instruct",
            "ibm/granite-3.3-8b-instruct",
            "meta/llama-3.1-8b-instruct",
            "nvidia/nv-embedqa-e5-v5",
        },
        "standard": {
            "nvidia/nemotron-nano-3-30b-a3b",
            "deepseek-ai/deepseek-r1-distill-qwen-32b",
            "mistralai/mistral-medium-3-instruct",
        },
        "large": {
            "meta/llama-3.3-70b-instruct",
            "meta/llama-4-scout-17b-16e-instruct",
            "qwen/qwen3.5-122b-a10b",
            "z-ai/glm5",
            "moonshotai/kimi-k2-thinking",
            "nvidia/llama-3.3-nemotron-super-49b-v1",
        },
        "premium": {
            "moonshotai/kimi-k2.5",
            "qwen/qwen3-coder-480b-a35b-instruct",
            "deepseek-ai/deepseek-v3.2",
            "nvidia/llama-3.1-nemotron-ultra-253b-v1",
            "mistralai/mistral-large-3-675b-instruct-2512",
        },
    }
    assert len(catalog.models) == 20
    for tier, ids in expected.items():
        assert {m.id for m in catalog.models.values() if m.tier == tier} == ids, tier
        for mid in ids:
            assert catalog.cost(mid) == catalog.tiers[tier]
    for model in catalog.models.values():
        assert model.context_length > 0 and model.max_output_tokens >= 0
        assert [d.provider for d in model.deployments] == ["nvidia"]
    assert catalog.providers["nvidia"].api_key_env == "NVIDIA_API_KEY"
    assert catalog.models["nvidia/nv-embedqa-e5-v5"].kind == "embedding"


def test_default_fallback_and_costs() -> None:
    catalog = defaults().catalog
    assert catalog.fallback_model == "meta/llama-3.1-8b-instruct"
    assert catalog.default_credits == 1
    assert catalog.cost("meta/llama-3.3-70b-instruct") == 3
    assert catalog.models["meta/llama-3.3-70b-instruct"].tier == "large"
    assert catalog.cost("someone/unknown-model") == 1


# TOML ---------------------------------------------------------------------------------------------


def test_toml_overrides(tmp_path: Path) -> None:
    """`[server] port` maps to `port`; any other section prefixes its keys (`upstream_read_timeout`)."""
    path = write(
        tmp_path,
        """
[server]
port = 9123
max_body_bytes = 2048

[upstream]
read_timeout = 42.5
retries = 2

[plans.free]
credits_per_day = 150

[providers.local]
base_url = "http://127.0.0.1:9/v1/"
api_key_env = "LOCAL_KEY"

[models."local/tiny"]
tier = "standard"
context_length = 4096
max_output_tokens = 512
deployments = [{ provider = "local", model = "tiny-1" }]

[catalog]
fallback_model = "local/tiny"
""",
    )
    s = load_settings(path, env={})
    assert s.server.port == 9123
    assert s.server.max_body_bytes == 2048
    assert s.upstream.read_timeout == 42.5
    assert s.upstream.retries == 2
    free = s.catalog.plans["free"]
    # Only the key given changes; the rest of the plan is kept.
    assert (free.credits_per_day, free.requests_per_minute, free.max_keys) == (150, 40, 1)
    assert s.catalog.plans["pro"].credits_per_day == 2000
    local = s.catalog.providers["local"]
    assert local.base_url == "http://127.0.0.1:9/v1" and local.api_key_env == "LOCAL_KEY"
    tiny = s.catalog.models["local/tiny"]
    assert (tiny.tier, tiny.context_length, tiny.max_output_tokens) == ("standard", 4096, 512)
    assert [(d.provider, d.model) for d in tiny.deployments] == [("local", "tiny-1")]
    assert tiny.publisher == "local"
    assert s.catalog.cost("local/tiny") == 2
    assert s.catalog.fallback_model == "local/tiny"
    # The shipped models are still there.
    assert len(s.catalog.models) == 21


def test_toml_changes_a_shipped_model_and_tier(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[tiers]
large = 4

[models."meta/llama-3.3-70b-instruct"]
tier = "premium"
""",
    )
    catalog = load_settings(path, env={}).catalog
    assert catalog.cost("meta/llama-3.3-70b-instruct") == 5
    assert catalog.cost("z-ai/glm5") == 4
    # Deployments are kept when only the tier changes.
    assert catalog.models["meta/llama-3.3-70b-instruct"].deployments[0].provider == "nvidia"


def test_empty_fallback_disables_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[catalog]\nfallback_model = ""\n')
    assert load_settings(path, env={}).catalog.fallback_model is None


def test_config_path_from_clex_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9200\n")
    assert load_settings(env={"CLEX_CONFIG": str(path)}).server.port == 9200


# precedence ---------------------------------------------------------------------------------------


def test_env_beats_toml_and_cli_beats_env(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9001\nhost = "127.0.0.2"\n\n[upstream]\nread_timeout = 10\n')
    env = {"CLEX_PORT": "9002", "CLEX_UPSTREAM_READ_TIMEOUT": "20.5"}
    s = load_settings(path, env=env)
    assert s.server.port == 9002
    assert s.upstream.read_timeout == 20.5
    assert s.server.host == "127.0.0.2"  # TOML still wins over the default where env is silent
    s = load_settings(path, env=env, overrides={"port": 9003, "host": None})
    assert s.server.port == 9003
    assert s.server.host == "127.0.0.2"  # a None override (flag not given) is ignored
    assert s.upstream.read_timeout == 20.5


def test_env_admin_token_and_as_dict_hides_it() -> None:
    s = load_settings(env={"CLEX_ADMIN_TOKEN": "s3cret"})
    assert s.server.admin_token == "s3cret"
    shown = as_dict(s)
    assert shown["admin_token"] == "set"
    assert "s3cret" not in repr(shown)


def test_provider_credentials_are_read_from_env_at_load(tmp_path: Path) -> None:
    """Each provider's `api_key_env` variable, shipped or from TOML; an unset or empty one is no credential."""
    path = write(tmp_path, '[providers.local]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "LOCAL_KEY"\n')
    s = load_settings(path, env={"NVIDIA_API_KEY": "nvapi-1", "LOCAL_KEY": "local-2"})
    assert {name: (c.variable, c.value) for name, c in s.credentials.items()} == {
        "nvidia": ("NVIDIA_API_KEY", "nvapi-1"), "local": ("LOCAL_KEY", "local-2")}
    assert load_settings(path, env={"NVIDIA_API_KEY": ""}).credentials == {}
    assert defaults().credentials == {}


def test_a_credential_never_shows_in_as_dict_or_repr() -> None:
    secret = "nvapi-NEVER-SHOWN-0123456789"
    s = load_settings(env={"NVIDIA_API_KEY": secret, "CLEX_ADMIN_TOKEN": "admin-NEVER-SHOWN"})
    assert s.credentials["nvidia"].value == secret
    for shown in (repr(as_dict(s)), repr(s), str(s), repr(s.credentials), str(s.credentials["nvidia"])):
        assert secret not in shown and "admin-NEVER-SHOWN" not in shown
    assert "NVIDIA_API_KEY" in repr(s.credentials["nvidia"])  # it says where the credential comes from


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("off", False),
        ("no", False),
        ("", False),
    ],
)
def test_bool_parsing(text: str, expected: bool) -> None:
    assert load_settings(env={"CLEX_DEMO": text}).server.demo is expected


def test_bool_from_toml_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\ndemo = true\n")
    assert load_settings(path, env={}).server.demo is True
    assert load_settings(path, env={}, overrides={"demo": False}).server.demo is False


# errors -------------------------------------------------------------------------------------------


def expect_error(match: str, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(**{"env": {}, **kwargs})
    return info.value


def test_bad_env_value_names_the_setting() -> None:
    expect_error("'port'", env={"CLEX_PORT": "abc"})
    expect_error("'demo'", env={"CLEX_DEMO": "maybe"})
    expect_error("'upstream_read_timeout'", env={"CLEX_UPSTREAM_READ_TIMEOUT": "soon"})


def test_bool_is_not_an_int(tmp_path: Path) -> None:
    """`port = true` in TOML is a mistake, not port 1."""
    expect_error("'port'", path=write(tmp_path, "[server]\nport = true\n"))


def test_unknown_setting(tmp_path: Path) -> None:
    expect_error(r"\[server\] colour", path=write(tmp_path, '[server]\ncolour = "blue"\n'))
    expect_error(r"\[upstream\] speed", path=write(tmp_path, "[upstream]\nspeed = 3\n", "b.toml"))


def test_model_with_unknown_provider_or_tier(tmp_path: Path) -> None:
    path = write(tmp_path, '[models."x/y"]\ndeployments = [{ provider = "nowhere" }]\n')
    expect_error("'nowhere'", path=path)
    path = write(tmp_path, '[models."x/y"]\ntier = "gold"\ndeployments = [{ provider = "nvidia" }]\n', "b.toml")
    expect_error("'gold'", path=path)


def test_new_model_needs_deployments_and_provider_needs_base_url(tmp_path: Path) -> None:
    expect_error("x/y", path=write(tmp_path, '[models."x/y"]\ntier = "cheap"\n'))
    expect_error("providers.p", path=write(tmp_path, '[providers.p]\napi_key_env = "K"\n', "b.toml"))


def test_fallback_must_be_in_catalog(tmp_path: Path) -> None:
    expect_error("no/such-model", path=write(tmp_path, '[catalog]\nfallback_model = "no/such-model"\n'))


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    expect_error("not found", path=tmp_path / "absent.toml")
    expect_error("not valid TOML", path=write(tmp_path, "[server\nport = = 1\n"))


def test_demo_plan_and_body_limit_checked() -> None:
    expect_error("demo_plan", overrides={"demo_plan": "platinum"})
    expect_error("max_body_bytes", overrides={"max_body_bytes": 10})


@pytest.mark.parametrize(
    ("toml", "name"),
    [
        ('[models."meta/llama-3.3-70b-instruct"]\ncontext_length = "big"\n', "context_length"),
        ('[tiers]\ncheap = "one"\n', "cheap"),
        ('[catalog]\ndefault_credits = "free"\n', "default_credits"),
        ('[models."x/y"]\ndeployments = [{ model = "y" }]\n', "provider"),
        ("[providers]\np = 3\n", "providers.p"),
    ],
)
def test_bad_catalog_value_is_a_config_error(tmp_path: Path, toml: str, name: str) -> None:
    """A non-numeric catalog value must be a ConfigError naming it (the CLI prints only ConfigErrors cleanly)."""
    expect_error(name, path=write(tmp_path, toml))


def test_new_plan_needs_every_number(tmp_path: Path) -> None:
    """A new plan that omits requests_per_minute must not silently get 0 rpm (every call on it would be a 429)."""
    path = write(tmp_path, "[plans.gold]\ncredits_per_day = 5000\nmax_keys = 3\n")
    expect_error("requests_per_minute", path=path)
    path = write(tmp_path, "[plans.gold]\ncredits_per_day = 5000\nrequests_per_minute = 300\nmax_keys = 3\n", "b.toml")
    gold = load_settings(path, env={}).catalog.plans["gold"]
    assert (gold.credits_per_day, gold.requests_per_minute, gold.max_keys) == (5000, 300, 3)


def test_a_plan_may_fail_open(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[plans.team]\ncredits_per_day = 10\nrequests_per_minute = 5\nmax_keys = 1\nfail_open = true\n")
    plans = load_settings(path, env={}).catalog.plans
    assert plans["team"].fail_open and not plans["free"].fail_open
    path.write_text('[plans.free]\nfail_open = "yes"\n')
    with pytest.raises(ConfigError, match="fail_open must be true or false"):
        load_settings(path, env={})


def test_several_workers_need_redis() -> None:
    with pytest.raises(ConfigError, match=r"4 workers need Redis .*every worker would grant the full daily budget"):
        load_settings(env={"CLEX_WORKERS": "4"})
    settings = load_settings(env={"CLEX_WORKERS": "4", "CLEX_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert (settings.server.workers, settings.redis.url) == (4, "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="at least 1"):
        load_settings(env={"CLEX_WORKERS": "0"})


@pytest.mark.parametrize(("name", "value"), [("CLEX_REDIS_URL", "http://redis:6379"),
                                             ("CLEX_DATABASE_URL", "mysql://db/clex")])
def test_shared_services_take_their_own_url_schemes(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(env={name: value})
    load_settings(env={"CLEX_REDIS_URL": "rediss://redis:6380/1", "CLEX_DATABASE_URL": "postgresql://u:p@db/clex"})
