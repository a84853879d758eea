"""benchmarks/peers/peers.py, the pure parts: what LiteLLM and Portkey are told, without installing or starting either.

Why these matter: a peer that is misconfigured still answers, only slower or differently (a tokenizer download on
the first request, a per-request zero-cost diagnostic, a stream that fails with 500, a bind on every interface), and
a comparison against a misconfigured peer is worthless. The real runs live in `make bench-peers`; these checks keep
the generated configuration, command lines and headers from drifting. No installs, no processes, no network.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

PEERS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
UPSTREAM = "http://127.0.0.1:9000/v1"
MODEL = "meta/llama-3.1-8b-instruct"


def _load() -> ModuleType:
    """Import peers.py by path, as the harness does: benchmarks/ is not a package."""
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS_DIR / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peers = _load()


@pytest.mark.parametrize("name", ["litellm", "portkey"])
def test_base_url_is_loopback_v1(name: str) -> None:
    assert peers.base_url(name, 4321) == "http://127.0.0.1:4321/v1"


def test_unknown_peer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        peers.base_url("kong", 1)
    with pytest.raises(ValueError, match="unknown peer"):
        peers.headers("kong", UPSTREAM)


def test_portkey_headers_route_to_the_upstream() -> None:
    headers = peers.headers("portkey", UPSTREAM + "/")
    assert headers == {
        "Authorization": "Bearer x",
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": UPSTREAM,  # /v1 kept, trailing slash dropped: Portkey appends /chat/completions
    }


def test_portkey_forwards_only_the_headers_asked_for() -> None:
    headers = peers.headers("portkey", UPSTREAM, forward=["x-demo-tokens", "x-demo-delay-ms"])
    assert headers["x-portkey-forward-headers"] == "x-demo-tokens,x-demo-delay-ms"


def test_litellm_headers_carry_its_master_key_only() -> None:
    headers = peers.headers("litellm", UPSTREAM)
    config = peers.litellm_config(UPSTREAM, MODEL)
    assert headers == {"Authorization": f"Bearer {config['general_settings']['master_key']}"}


def test_litellm_config_routes_both_names_to_the_openai_compatible_upstream() -> None:
    config = peers.litellm_config(UPSTREAM + "/", MODEL)
    names = [entry["model_name"] for entry in config["model_list"]]
    assert names == [MODEL, "bench-model"]
    for entry in config["model_list"]:
        params = entry["litellm_params"]
        assert params["model"] == f"openai/{MODEL}"  # LiteLLM strips the provider prefix: the upstream sees MODEL
        assert params["api_base"] == UPSTREAM
        assert params["api_key"] == "x"
        # Priced, so LiteLLM skips its per-request zero-cost diagnostic.
        assert params["input_cost_per_token"] > 0
        assert params["output_cost_per_token"] > 0


def test_litellm_config_for_bench_model_has_one_entry() -> None:
    config = peers.litellm_config(UPSTREAM, "bench-model")
    assert [entry["model_name"] for entry in config["model_list"]] == ["bench-model"]
    assert config["model_list"][0]["litellm_params"]["model"] == "openai/bench-model"


def test_litellm_config_does_no_optional_work() -> None:
    config = peers.litellm_config(UPSTREAM, MODEL)
    settings = config["litellm_settings"]
    assert settings["num_retries"] == 0
    assert settings["turn_off_message_logging"] is True
    assert settings["disable_hf_tokenizer_download"] is True
    assert "callbacks" not in settings and "success_callback" not in settings
    general = config["general_settings"]
    assert "database_url" not in general
    assert general["disable_spend_logs"] is True
    assert general["master_key"].startswith("sk-")
    assert "forward_client_headers_to_llm_api" not in general


def test_litellm_config_can_forward_client_headers() -> None:
    config = peers.litellm_config(UPSTREAM, MODEL, forward_client_headers=True)
    assert config["general_settings"]["forward_client_headers_to_llm_api"] is True


def test_rendered_litellm_config_reads_back_as_yaml_and_json() -> None:
    yaml = pytest.importorskip("yaml")
    config = peers.litellm_config(UPSTREAM, MODEL)
    text = peers.render_litellm_config(config)
    assert yaml.safe_load(text) == config  # what LiteLLM's loader sees
    assert json.loads(text.split("\n", 1)[1]) == config


def test_litellm_env_is_quiet_offline_and_without_database_or_proxies() -> None:
    base = {
        "PATH": "/usr/bin",
        "DATABASE_URL": "postgresql://db",
        "LITELLM_MASTER_KEY": "sk-other",
        "HTTP_PROXY": "http://proxy:3128",
        "https_proxy": "http://proxy:3128",
    }
    env = peers.litellm_env(base)
    assert env["PATH"] == "/usr/bin"
    assert env["LITELLM_LOG"] == "ERROR"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_TELEMETRY_DISABLED"] == "true"
    assert env["HF_HUB_OFFLINE"] == "1"
    for gone in ("DATABASE_URL", "LITELLM_MASTER_KEY", "HTTP_PROXY", "https_proxy"):
        assert gone not in env
    assert base["DATABASE_URL"] == "postgresql://db"  # the caller's mapping is left alone


def test_portkey_env_is_production_on_loopback_without_proxies() -> None:
    env = peers.portkey_env({"PATH": "/usr/bin", "HTTPS_PROXY": "http://proxy:3128"})
    assert env["NODE_ENV"] == "production"
    assert env["PEER_BIND_HOST"] == "127.0.0.1"
    assert "HTTPS_PROXY" not in env
    assert env["PATH"] == "/usr/bin"


def test_litellm_command_binds_loopback_with_one_worker(tmp_path: Path) -> None:
    config = tmp_path / "litellm.yaml"
    cmd = peers.command("litellm", 4010, config)
    assert cmd[0].endswith("/.litellm-venv/bin/litellm")
    joined = " ".join(cmd)
    assert f"--config {config}" in joined
    assert "--host 127.0.0.1" in joined
    assert "--port 4010" in joined
    assert "--num_workers 1" in joined


def test_litellm_command_needs_its_config() -> None:
    with pytest.raises(ValueError, match="config"):
        peers.command("litellm", 4010)


def test_portkey_command_uses_port_equals_and_the_loopback_preload() -> None:
    cmd = peers.command("portkey", 8787)
    assert cmd[:3] == ["node", "--require", str(PEERS_DIR / "bind_loopback.cjs")]
    assert (PEERS_DIR / "bind_loopback.cjs").is_file()
    assert cmd[3].endswith("node_modules/@portkey-ai/gateway/build/start-server.js")
    assert "--port=8787" in cmd  # `--port 8787` is silently ignored: the gateway would start on 8787 regardless
    assert "--headless" in cmd


@pytest.mark.parametrize("name", ["litellm", "portkey"])
def test_cpu_pins_with_taskset(name: str, tmp_path: Path) -> None:
    cmd = peers.command(name, 1234, tmp_path / "c.yaml", cpu="0")
    assert cmd[:3] == ["taskset", "-c", "0"]


def test_install_specs_pin_exact_versions() -> None:
    assert peers.install_spec("litellm") == f"litellm[proxy]=={peers.LITELLM_VERSION}"
    assert peers.LITELLM_VERSION.startswith("1.")
    manifest = peers.portkey_manifest()
    assert manifest["private"] is True
    assert manifest["dependencies"] == {"@portkey-ai/gateway": peers.PORTKEY_VERSION}
    assert peers.PORTKEY_VERSION.startswith("1.")
    # The streaming fix: node-server 1.14.2+ makes Portkey's streamed answers fail with 500.
    assert manifest["overrides"] == {"@hono/node-server": "1.14.1"}
    for version in (peers.LITELLM_VERSION, peers.PORTKEY_VERSION, peers.HONO_NODE_SERVER_VERSION):
        assert version[0].isdigit()  # exact pins, no ranges


def test_installed_follows_the_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "LITELLM_VENV", tmp_path / "venv")
    monkeypatch.setattr(peers, "PORTKEY_DIR", tmp_path / "portkey")
    assert not peers.installed("litellm")
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / ".installed").write_text("litellm[proxy]==1.0.0")  # an older pin: reinstall
    assert not peers.installed("litellm")
    (tmp_path / "venv" / ".installed").write_text(peers.install_spec("litellm"))
    assert peers.installed("litellm")
    (tmp_path / "portkey").mkdir()
    (tmp_path / "portkey" / ".installed").write_text(peers.install_spec("portkey"))
    assert peers.installed("portkey")


def test_run_files_are_per_peer_and_port() -> None:
    assert peers.config_path("litellm", 4000) != peers.config_path("litellm", 4001)
    assert peers.log_path("portkey", 8787).name == "portkey-8787.log"
    assert peers.log_path("portkey", 8787).parent == PEERS_DIR / ".run"


def test_gitignore_keeps_installs_and_run_files_out() -> None:
    ignored = {line.strip() for line in (PEERS_DIR / ".gitignore").read_text().splitlines()}
    assert {".litellm-venv/", ".portkey/", ".run/"} <= ignored


def test_cli_config_prints_without_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert peers.main(["config", "litellm", "--port", "4011", "--upstream", UPSTREAM, "--model", MODEL]) == 0
    out = capsys.readouterr().out
    assert f'"api_base": "{UPSTREAM}"' in out
    assert "--port 4011" in out
