"""The production deployment files under deploy/ must load and keep the properties a scaled-out gateway depends on.

No network, Docker or cluster is needed: the files are parsed and their settings checked against clexproxy itself
(every `CLEX_*` variable must be a real setting, the ConfigMap's TOML must load). Where `nginx` or `systemd-analyze`
is installed, it checks its file too; those tests are skipped when the tool is missing.
"""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from clexproxy.config import SETTING_NAMES, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
NGINX = DEPLOY / "nginx.conf"
REDIS_CONF = DEPLOY / "redis.conf"
UNIT = DEPLOY / "systemd" / "clexproxy.service"
REDIS_SNIPPET = DEPLOY / "systemd" / "redis-clexproxy.conf"
ENV_EXAMPLE = DEPLOY / "env.example"

# Variables the deploy files may name before clexproxy reads them. CLEX_DATABASE_URL (the PostgreSQL key store
# shared by several hosts, `--database`) is being added to Settings as `database_url` alongside these files;
# remove it from here once that field exists.
PENDING = frozenset({"CLEX_DATABASE_URL"})
# Read by load_settings itself (the TOML file's path), not a Settings field.
LOADER_VARIABLES = frozenset({"CLEX_CONFIG"})

# The gateway's own defaults the files must respect.
UPSTREAM_READ_TIMEOUT = Settings().upstream.read_timeout
SHUTDOWN_BUDGET_SECONDS = 30  # workers drain for up to 10 s, the parent waits up to 15 s in all, plus margin

_CLEX_VARIABLE = re.compile(r"\bCLEX_[A-Z0-9_]*[A-Z0-9]")


def setting_variables() -> frozenset[str]:
    """`CLEX_<NAME>` for every scalar setting."""
    return frozenset("CLEX_" + name.upper() for name in SETTING_NAMES)


def _text_files() -> Iterator[Path]:
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix not in {".png", ".svg"}:
            yield path


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


def _docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _seconds(duration: str | int) -> float:
    """'30s', '1m30s', '2m' or a bare number of seconds."""
    if isinstance(duration, int) or duration.strip().isdigit():
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration.strip())
    assert parts and duration.strip(), f"unreadable duration {duration!r}"
    return int(parts[1] or 0) * 60.0 + int(parts[2] or 0)


def _redis_settings(text: str) -> dict[str, str]:
    """Directive -> value of a redis.conf (the last occurrence wins, as in Redis); comments ignored."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        found[name.lower()] = value.strip().strip('"')
    return found


def _assert_redis_durable(settings: dict[str, str], where: str) -> None:
    assert settings.get("appendonly") == "yes", f"{where}: appendonly yes"
    assert settings.get("appendfsync") == "always", f"{where}: appendfsync always"
    assert settings.get("no-appendfsync-on-rewrite", "no") == "no", f"{where}: fsync must go on during rewrites"
    assert settings.get("maxmemory-policy", "noeviction") == "noeviction", f"{where}: lease keys must never be evicted"


# -- every file ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _docs(path), f"{path.name} holds no document"


def test_the_expected_files_exist() -> None:
    for name in (
        "Dockerfile",
        "Dockerfile.dockerignore",
        "docker-compose.yml",
        "nginx.conf",
        "redis.conf",
        "prometheus-compose.yml",
        "env.example",
        "systemd/clexproxy.service",
        "systemd/redis-clexproxy.conf",
        "k8s/namespace.yaml",
        "k8s/configmap.yaml",
        "k8s/secret.example.yaml",
        "k8s/deployment.yaml",
        "k8s/service.yaml",
        "k8s/hpa.yaml",
        "k8s/pdb.yaml",
        "k8s/redis.yaml",
    ):
        assert (DEPLOY / name).is_file(), name


def test_every_clex_variable_is_a_real_setting() -> None:
    known = setting_variables() | LOADER_VARIABLES | PENDING
    unknown: dict[str, set[str]] = {}
    for path in _text_files():
        for name in _CLEX_VARIABLE.findall(path.read_text(encoding="utf-8", errors="replace")):
            if name not in known:
                unknown.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    assert not unknown, f"CLEX_* variables that are no setting: {unknown}"


def test_the_loader_variables_are_read_by_the_loader() -> None:
    source = inspect.getsource(load_settings)
    for name in LOADER_VARIABLES:
        assert f'"{name}"' in source, name


def test_the_variable_scan_finds_names() -> None:
    assert _CLEX_VARIABLE.findall("CLEX_WORKERS=4 `CLEX_*` CLEX_REDIS_URL: x CLEXPROXY_NO_EXTENSIONS") == [
        "CLEX_WORKERS",
        "CLEX_REDIS_URL",
    ]


def _key_variables(settings: Settings) -> set[str]:
    """The credential variables of every provider in the settings' catalog."""
    return {p.api_key_env for p in settings.catalog.providers.values() if p.api_key_env}


# -- Dockerfile --------------------------------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_dockerfile_builds_wheels_in_a_builder_stage() -> None:
    instructions = _instructions()
    stages = [args for word, args in instructions if word == "FROM"]
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    assert stages[0].endswith(" AS builder")
    builder_runs = " ".join(
        args for word, args in instructions[: len(instructions) - len(_runtime_stage())] if word == "RUN"
    )
    assert "build-essential" in builder_runs
    assert "pip wheel --no-deps" in builder_runs and "/wheels" in builder_runs
    runtime_runs = " ".join(args for word, args in _runtime_stage() if word == "RUN")
    assert "from=builder" in runtime_runs and "--no-index" in runtime_runs
    assert "build-essential" not in runtime_runs, "no compiler in the runtime image"
    assert "USING_EXTENSION" in runtime_runs, "the image build proves the compiled fastpath loads"


def test_dockerfile_runtime_stage() -> None:
    runtime = _runtime_stage()
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "runs as a non-root user"
    exposed = {port for word, args in runtime if word == "EXPOSE" for port in args.split()}
    assert {"8080", "9090"} <= exposed
    env = " ".join(args for word, args in runtime if word == "ENV")
    for pair in (
        "CLEX_HOST=0.0.0.0",
        "CLEX_LOG_FORMAT=json",
        "CLEX_DATA_DIR=/var/lib/clexproxy",
        "CLEX_METRICS_PORT=9090",
    ):
        assert pair in env.split(), pair
    (healthcheck,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "python" in healthcheck and "curl" not in healthcheck
    (entrypoint,) = [args for word, args in runtime if word == "ENTRYPOINT"]
    assert entrypoint == '["clexproxy", "serve"]'


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(is_exception, regex) per line, as BuildKit reads them: `**` any depth, `*` within one path segment."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(body):
            if body.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif body.startswith("**", i):
                regex += ".*"
                i += 2
            elif body[i] == "*":
                regex += "[^/]*"
                i += 1
            elif body[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(body[i])
                i += 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _in_build_context(path: str) -> bool:
    """Whether BuildKit sends `path` (relative to the repository root): the last matching pattern decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, pattern in _dockerignore_patterns():
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def test_the_build_context_holds_the_sources_and_nothing_secret() -> None:
    copied = [args for word, args in _instructions() if word == "COPY" and "--from" not in args]
    sources = [src for args in copied for src in args.split()[:-1]]
    assert sources, "the builder copies the sources"
    for src in sources:
        assert (ROOT / src).exists(), src
        assert _in_build_context(src), f"{src} is copied but excluded from the build context"
    for path in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "clexproxy/app.py",
        "clexproxy/fastpath/_sse.pyx",
        "clexproxy/store/sqlite.py",
        "clexproxy/sync/redis.py",
    ):
        assert _in_build_context(path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "deploy/.env",
        ".clexproxy-data/clexproxy.db",
        "clexproxy/fastpath/_sse.cpython-311-x86_64-linux-gnu.so",
        "clexproxy/fastpath/_sse.c",
        "clexproxy/__pycache__/app.cpython-311.pyc",
        "build/lib/clexproxy/app.py",
        "tests/conftest.py",
    ):
        assert not _in_build_context(path), path


def test_the_wheel_ships_every_subpackage() -> None:
    """The image installs a wheel: a package missing from pyproject's list is missing at run time."""
    with (ROOT / "pyproject.toml").open("rb") as fh:
        listed = set(tomllib.load(fh)["tool"]["setuptools"]["packages"])
    packages = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "clexproxy").rglob("__init__.py")}
    assert packages <= listed, f"packages `pip install .` leaves out: {sorted(packages - listed)}"


# -- docker compose ----------------------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    (doc,) = _docs(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def _gateways() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    found = {
        name: svc for name, svc in services.items() if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile"
    }
    assert len(found) >= 2, "two gateways behind the load balancer"
    return found


def _interpolated(value: str) -> str:
    """A compose value with every ${VAR...} replaced by a sample, as compose would with deploy/.env filled in."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?[-?][^}]*)?\}", "sample", value)


def test_compose_gateways_share_redis_and_postgres() -> None:
    for name, gateway in _gateways().items():
        env = {k: str(v) for k, v in gateway["environment"].items()}
        assert int(env["CLEX_WORKERS"]) > 1, name
        assert env["CLEX_REDIS_URL"].startswith("redis://") and "@redis:" in env["CLEX_REDIS_URL"], name
        assert env["CLEX_DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["CLEX_DATABASE_URL"], name
        assert env.get("CLEX_METRICS_DIR"), f"{name}: one scrape must cover every worker"
        assert gateway["env_file"] in (".env", [".env"]), name
        assert _seconds(gateway["stop_grace_period"]) >= SHUTDOWN_BUDGET_SECONDS, name
        assert gateway.get("stop_signal", "SIGTERM") == "SIGTERM", name
        # The environment is one the gateway accepts (N workers need Redis, URLs well-formed).
        settings = load_settings(env={k: _interpolated(v) for k, v in env.items()})
        assert settings.server.workers > 1 and settings.redis.url


def test_compose_waits_for_healthy_dependencies() -> None:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    assert set(_gateways()) <= set(services["lb"]["depends_on"])
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait for"
    for name in _gateways():
        assert {"redis", "postgres"} <= set(services[name]["depends_on"]), name
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name


def test_compose_redis_is_durable() -> None:
    redis = _compose()["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert any(str(v).startswith("./redis.conf:") for v in redis["volumes"]), "runs with deploy/redis.conf"
    assert any(":/data" in str(v) and not str(v).startswith(".") for v in redis["volumes"]), "a persistent volume"
    command = [str(part) for part in redis["command"]]
    assert command[:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    settings = _redis_settings(REDIS_CONF.read_text(encoding="utf-8"))
    # Command-line options come after the file and win: fold them in.
    for i, part in enumerate(command):
        if part.startswith("--") and i + 1 < len(command):
            settings[part[2:].lower()] = command[i + 1]
    _assert_redis_durable(settings, "compose redis")
    assert settings.get("dir") == "/data"


def test_compose_postgres_and_prometheus() -> None:
    services = _compose()["services"]
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert any(":/var/lib/postgresql/data" in str(v) for v in postgres["volumes"])
    prometheus = services["prometheus"]
    mounts = {str(v).split(":")[0]: str(v).split(":")[1] for v in prometheus["volumes"] if str(v).startswith("./")}
    assert "./prometheus-compose.yml" in mounts and "./alerts.yml" in mounts
    (config,) = _docs(DEPLOY / "prometheus-compose.yml")
    # alerts.yml is mounted beside the config, where its relative rule_files entry points.
    assert config["rule_files"] == ["alerts.yml"]
    assert Path(mounts["./alerts.yml"]).parent == Path(mounts["./prometheus-compose.yml"]).parent
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "clexproxy"]
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected = {f"{name}:{gw['environment']['CLEX_METRICS_PORT']}" for name, gw in _gateways().items()}
    assert targets == expected


def test_compose_secrets_come_from_an_uncommitted_env_file() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    defined = {m[1]: m[2] for m in re.finditer(r"^([A-Z0-9_]+)=(.*)$", example, re.M)}
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)", text)):
        assert name in defined, f"compose interpolates ${{{name}}}, which env.example does not list"
    # The gateways run the shipped catalog (no config file): its providers' credentials.
    for name in {"CLEX_ADMIN_TOKEN", *_key_variables(load_settings(env={}))}:
        assert name in defined, name
    assert all(value == "" for value in defined.values()), "env.example must not carry values"
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert ".env" in ignored
    for key in ("api_key", "password", "token", "secret"):
        assert not re.search(rf"{key}\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{{12,}}", text, re.I), f"a literal {key} in compose"


# -- nginx -------------------------------------------------------------------------------------------------------------


Directive = tuple[str, list[str], list[Any]]


def _nginx_tree(text: str) -> list[Directive]:
    """nginx.conf as nested (name, args, children) directives."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|[{};]|[^\s{};]+', re.sub(r"(?m)#.*$", "", text))

    def block(i: int) -> tuple[list[Directive], int]:
        out: list[Directive] = []
        words: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == ";":
                out.append((words[0], words[1:], []))
                words = []
            elif token == "{":
                children, i = block(i)
                out.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                return out, i
            else:
                words.append(token.strip("\"'") if token[0] in "\"'" else token)
        return out, i

    return block(0)[0]


def _find(tree: list[Directive], name: str) -> Iterator[Directive]:
    for directive in tree:
        if directive[0] == name:
            yield directive
        yield from _find(directive[2], name)


def test_nginx_balances_both_gateways_with_keepalive() -> None:
    tree = _nginx_tree(NGINX.read_text(encoding="utf-8"))
    (upstream,) = [d for d in _find(tree, "upstream") if d[1] == ["clexproxy"]]
    servers = {args[0] for name, args, _ in upstream[2] if name == "server"}
    assert servers == {f"{name}:8080" for name in _gateways()}
    assert any(name == "keepalive" and int(args[0]) > 0 for name, args, _ in upstream[2])


def test_nginx_streams_without_buffering() -> None:
    tree = _nginx_tree(NGINX.read_text(encoding="utf-8"))
    proxied = [d for d in _find(tree, "location") if any(c[0] == "proxy_pass" for c in d[2])]
    assert proxied
    for _, where, children in proxied:
        settings: dict[str, list[str]] = {}
        headers: dict[str, str] = {}
        for name, args, _ in children:
            settings[name] = args
            if name == "proxy_set_header":
                headers[args[0].lower()] = args[1] if len(args) > 1 else ""
        assert settings["proxy_pass"] == ["http://clexproxy"], where
        assert settings.get("proxy_buffering") == ["off"], f"location {where}: SSE must not be buffered"
        assert settings.get("proxy_http_version") == ["1.1"], where
        assert headers.get("connection") == "", f"location {where}: keep-alive to the gateways needs Connection ''"
        read_timeout = settings.get("proxy_read_timeout", ["60s"])[0]
        assert _seconds(read_timeout) > UPSTREAM_READ_TIMEOUT, f"location {where}: the gateway must time out first"


def test_nginx_keeps_metrics_off_the_public_port() -> None:
    tree = _nginx_tree(NGINX.read_text(encoding="utf-8"))
    (metrics,) = [d for d in _find(tree, "location") if d[1] == ["=", "/metrics"]]
    assert not any(c[0] == "proxy_pass" for c in metrics[2])


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    exe = shutil.which("nginx")
    if exe is None:
        pytest.skip("nginx is not installed")
    text = NGINX.read_text(encoding="utf-8")
    # Loopback for the compose service names; `resolve` needs nginx >= 1.27.3, the image's, not the host's.
    for name in _gateways():
        text = text.replace(f"{name}:8080", "127.0.0.1:8080")
    text = text.replace(" resolve ", " ").replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [exe, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- Kubernetes --------------------------------------------------------------------------------------------------------


def _k8s() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def _deployment() -> dict[str, Any]:
    return _k8s()[("Deployment", "clexproxy")]


def _container() -> dict[str, Any]:
    (container,) = [c for c in _deployment()["spec"]["template"]["spec"]["containers"] if c["name"] == "clexproxy"]
    return container


def _env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in _container().get("env", [])}


@pytest.fixture
def configmap_toml(tmp_path: Path) -> Path:
    """The ConfigMap's TOML, written where load_settings can read it."""
    text = _k8s()[("ConfigMap", "clexproxy-config")]["data"]["clexproxy.toml"]
    path = tmp_path / "clexproxy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_k8s_objects_live_in_the_namespace() -> None:
    objects = _k8s()
    assert ("Namespace", "clexproxy") in objects
    for (kind, name), doc in objects.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == "clexproxy", f"{kind}/{name}"


def test_k8s_deployment_probes_and_shutdown() -> None:
    spec = _deployment()["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= SHUTDOWN_BUDGET_SECONDS
    pre_stop = container["lifecycle"]["preStop"]
    sleep = pre_stop.get("sleep", {}).get("seconds") or int(pre_stop["exec"]["command"][-1])
    assert 0 < sleep <= 10
    # The preStop pause comes out of the same grace period as the gateway's own shutdown.
    assert pod["terminationGracePeriodSeconds"] >= sleep + 15
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_k8s_deployment_runs_as_non_root_on_a_read_only_root() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    container = _container()
    merged = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert merged["runAsNonRoot"] is True
    assert merged.get("runAsUser", 10001) != 0
    assert merged["allowPrivilegeEscalation"] is False
    assert merged["readOnlyRootFilesystem"] is True
    assert merged["capabilities"]["drop"] == ["ALL"]
    # What the gateway writes lies on emptyDir volumes.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = _env()
    for variable in ("CLEX_DATA_DIR", "CLEX_METRICS_DIR"):
        path = env[variable]["value"]
        (mount,) = [m for m in mounts if path == m or path.startswith(m + "/")]
        assert "emptyDir" in volumes[mounts[mount]], f"{variable} is on {mounts[mount]}, not an emptyDir"


def test_k8s_deployment_scales_workers_with_its_cpu_limit() -> None:
    env = _env()
    field = env["CLEX_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert field["resource"] == "limits.cpu" and field["containerName"] == "clexproxy"
    assert float(str(_container()["resources"]["limits"]["cpu"]).rstrip("m")) > 1, "more than one worker per pod"
    assert env["CLEX_REDIS_URL"]["value"].startswith("redis://"), "more than one worker needs Redis"
    # $(VAR) is expanded only from variables defined earlier in the list.
    names = [entry["name"] for entry in _container()["env"]]
    for i, entry in enumerate(_container()["env"]):
        for ref in re.findall(r"\$\(([A-Za-z0-9_]+)\)", str(entry.get("value", ""))):
            assert ref in names[:i], f"{entry['name']} uses $({ref}) before it is defined"


def test_k8s_secrets_come_from_the_secret(configmap_toml: Path) -> None:
    container = _container()
    env = _env()
    secret = _k8s()[("Secret", "clexproxy-secrets")]
    secret_keys = set(secret["stringData"])
    from_secret = {name for name, entry in env.items() if "secretKeyRef" in entry.get("valueFrom", {})}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            from_secret |= secret_keys
    providers = _key_variables(load_settings(configmap_toml, env={}))
    for name in providers | {"CLEX_ADMIN_TOKEN", "CLEX_DATABASE_URL", "REDIS_PASSWORD"}:
        assert name in from_secret, f"{name} must come from the Secret"
        assert "value" not in env.get(name, {}), f"{name} must not be a literal in the Deployment"
        assert name in secret_keys, f"secret.example.yaml must show {name}"
    for value in secret["stringData"].values():
        assert "example" in value, "secret.example.yaml holds placeholders only"


def test_k8s_configmap_loads_with_the_deployment_env(configmap_toml: Path) -> None:
    container = _container()
    assert container["args"] == ["--config", "/etc/clexproxy/clexproxy.toml"]
    pod = _deployment()["spec"]["template"]["spec"]
    (config_volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "clexproxy-config"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == config_volume["name"]]
    assert mount["mountPath"] == "/etc/clexproxy"
    literal = {name: str(e["value"]) for name, e in _env().items() if "value" in e}
    settings = load_settings(configmap_toml, env={**literal, "CLEX_WORKERS": "2"})
    assert settings.server.workers == 2 and settings.redis.url
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.metrics.port == ports["metrics"]
    assert settings.server.port == ports["http"]
    annotations = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_k8s_service_pdb_and_hpa_target_the_gateways() -> None:
    objects = _k8s()
    deployment = _deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    service = objects[("Service", "clexproxy")]
    assert _selects(service["spec"]["selector"], pod_labels)
    port_names = {p["name"] for p in _container()["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    pdb = objects[("PodDisruptionBudget", "clexproxy")]
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    hpa = objects[("HorizontalPodAutoscaler", "clexproxy")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "clexproxy")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # Room for a drain: more replicas than the budget must keep.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
    # Redis' pods are no gateways.
    redis_labels = objects[("StatefulSet", "redis")]["spec"]["template"]["metadata"]["labels"]
    assert not _selects(pdb["spec"]["selector"]["matchLabels"], redis_labels)


def test_k8s_redis_is_durable() -> None:
    objects = _k8s()
    statefulset = objects[("StatefulSet", "redis")]
    config = _redis_settings(objects[("ConfigMap", "redis-config")]["data"]["redis.conf"])
    _assert_redis_durable(config, "k8s redis")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == config["dir"], "the AOF lives on the persistent volume"
    assert "/etc/redis/redis.conf" in container["args"]
    assert container["image"].startswith("redis:7")
    # The gateways reach it by its Service's name.
    service = objects[("Service", statefulset["spec"]["serviceName"])]
    assert f"@{service['metadata']['name']}:6379/" in _env()["CLEX_REDIS_URL"]["value"]


def test_k8s_kustomization_applies_everything_but_the_example_secret() -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


# -- systemd -----------------------------------------------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> its values, in order (unit files may repeat a key)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_systemd_unit() -> None:
    unit = _unit(UNIT)

    def one(key: str) -> str:
        values = unit.get(f"Service.{key}")
        assert values, f"[Service] {key} is missing"
        return values[-1]

    assert one("ExecStart") == "/usr/local/bin/clexproxy serve --config /etc/clexproxy/clexproxy.toml"
    assert one("EnvironmentFile") == "-/etc/clexproxy/env"
    assert one("DynamicUser") == "yes" or one("User") not in {"", "root", "0"}
    assert one("StateDirectory") == "clexproxy"
    assert one("KillSignal") == "SIGTERM"
    # SIGTERM to the parent alone: a worker must not get a second stop signal from systemd.
    assert one("KillMode") == "mixed"
    assert _seconds(one("TimeoutStopSec")) >= SHUTDOWN_BUDGET_SECONDS
    assert one("Restart") == "on-failure"
    assert int(one("LimitNOFILE")) >= 65536
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert one(key) == "yes", key
    assert one("ProtectSystem") == "strict"
    assert "@resources" not in " ".join(unit.get("Service.SystemCallFilter", [])), "serve raises its open-file limit"
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_systemd_redis_snippet_is_durable() -> None:
    _assert_redis_durable(_redis_settings(REDIS_SNIPPET.read_text(encoding="utf-8")), REDIS_SNIPPET.name)
    _assert_redis_durable(_redis_settings(REDIS_CONF.read_text(encoding="utf-8")), REDIS_CONF.name)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also checks that ExecStart's program exists: point it at this environment's clexproxy.
    clexproxy = Path(sys.executable).with_name("clexproxy")
    if not clexproxy.exists():
        pytest.skip("no clexproxy executable beside this Python")
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/clexproxy", str(clexproxy)), encoding="utf-8"
    )
    done = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    problems = [line for line in output.splitlines() if unit.name in line or "Unknown" in line or "Invalid" in line]
    assert not problems, output
