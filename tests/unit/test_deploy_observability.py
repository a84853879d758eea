"""The shipped Prometheus config, alerting rules and Grafana dashboard must stay loadable and name only real metrics.

A renamed metric silently empties a panel and disarms an alert, so every `clexproxy_*` name in the alerts and the
dashboard is checked against the metric list. The YAML checks need PyYAML and the `promtool` ones need promtool
(Debian: `apt-get install prometheus`); each is skipped when its tool is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "clexproxy.json"

# Mirrors the collectors of observability/metrics.py, by exposition name: counters with their `_total`, histograms
# without `_bucket`/`_sum`/`_count`. To be replaced by the names read from a live `Metrics` instance.
def _exposed_names() -> frozenset[str]:
    """The metric names a live `Metrics` exposes (counters with their `_total`)."""
    from clexproxy.observability.metrics import Metrics

    metrics = Metrics()
    return frozenset(f.name + "_total" if f.kind == "counter" else f.name for f in metrics._families)


KNOWN_METRICS = _exposed_names()

_METRIC_NAME = re.compile(r"clexproxy_[a-z_]+")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_SEVERITIES = {"critical", "warning", "info"}
_GRID_COLUMNS = 24


def referenced_metrics(text: str) -> set[str]:
    """Every `clexproxy_*` metric name in `text`, histogram series folded onto their family name."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC_NAME.findall(text)}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return doc


def _panels() -> list[dict[str, Any]]:
    """Top-level panels and those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alert_rules(doc: Any) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


# -- metric names: no PyYAML needed --------------------------------------------------------------------------------


def test_histogram_suffixes_fold_onto_the_family() -> None:
    text = 'rate(clexproxy_gateway_overhead_seconds_bucket{le="0.005"}[5m]) clexproxy_upstream_ttfb_seconds_count'
    assert referenced_metrics(text) == {"clexproxy_gateway_overhead_seconds", "clexproxy_upstream_ttfb_seconds"}


@pytest.mark.parametrize("path", [ALERTS, DASHBOARD], ids=lambda p: p.name)
def test_only_known_metrics_are_referenced(path: Path) -> None:
    names = referenced_metrics(path.read_text(encoding="utf-8"))
    assert names, f"{path.name} references no clexproxy metric at all"
    assert names <= KNOWN_METRICS, f"{path.name} references unknown metrics: {sorted(names - KNOWN_METRICS)}"


def test_dashboard_graphs_every_metric() -> None:
    missing = KNOWN_METRICS - referenced_metrics(DASHBOARD.read_text(encoding="utf-8"))
    assert not missing, f"metrics no dashboard panel shows: {sorted(missing)}"


def test_alerts_watch_the_metrics_operators_are_paged_for() -> None:
    names = referenced_metrics(ALERTS.read_text(encoding="utf-8"))
    for name in (
        "clexproxy_requests_total",
        "clexproxy_rate_limited_total",
        "clexproxy_upstream_errors_total",
        "clexproxy_gateway_overhead_seconds",
        "clexproxy_workers",
        "clexproxy_redis_up",
    ):
        assert name in names, name


# -- the Grafana dashboard ---------------------------------------------------------------------------------------


def test_dashboard_is_importable() -> None:
    doc = _dashboard()
    assert doc["schemaVersion"] == 39
    assert doc["uid"] and doc["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    # The data source is a variable (works for UI import and file provisioning alike) or an import input.
    has_ds_variable = any(v["type"] == "datasource" and v["query"] == "prometheus" for v in variables.values())
    has_ds_input = any(i.get("name") == "DS_PROMETHEUS" for i in doc.get("__inputs", []))
    assert has_ds_variable or has_ds_input
    for name in ("model", "provider"):
        assert variables[name]["type"] == "query"
        assert "label_values(" in variables[name]["definition"]


def test_every_panel_has_a_title_a_place_and_a_query() -> None:
    panels = _panels()
    assert len(panels) >= 20
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel.get('id')} has no title"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in ("h", "w", "x", "y")), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= _GRID_COLUMNS, title
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets, f"panel {title!r} has no query"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {title!r} has a target without expr"


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


# -- the Prometheus config and rules (PyYAML) ----------------------------------------------------------------------


def test_alert_rules_are_complete() -> None:
    doc = _yaml(ALERTS)
    assert doc["groups"]
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group.get("name")
    rules = _alert_rules(doc)
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        name = rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert rule["labels"]["severity"] in _SEVERITIES, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_scrape_config() -> None:
    doc = _yaml(PROMETHEUS)
    (job,) = [job for job in doc["scrape_configs"] if job["job_name"] == "clexproxy"]
    assert job["scrape_interval"] == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [target for config in job["static_configs"] for target in config["targets"]]
    assert len(targets) >= 2
    assert doc["rule_files"] == ["alerts.yml"]
    assert (PROMETHEUS.parent / doc["rule_files"][0]).is_file()


# -- promtool ------------------------------------------------------------------------------------------------------


def _promtool(*args: str, cwd: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not installed")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_config_and_rules() -> None:
    _promtool("check", "config", PROMETHEUS.name, cwd=DEPLOY)
    _promtool("check", "rules", ALERTS.name, cwd=DEPLOY)


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    body = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return {"series": f"{name}{{{body}}}", "values": values}


def _fires(alertname: str, at: str, *label_sets: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alertname, "exp_alerts": [{"exp_labels": labels} for labels in label_sets]}


CHAT = {"endpoint": "/chat/completions", "api": "chat", "instance": "h1", "job": "clexproxy", "plan": "pro"}

# Synthetic series, one sample a minute, and which alerts they must (and must not) raise.
PROMTOOL_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            _series("clexproxy_requests_total", "0+90x30", model="m", status_class="2xx", **CHAT),
            _series("clexproxy_requests_total", "0+10x30", model="m", status_class="5xx", **CHAT),
            _series(
                "clexproxy_requests_total",
                "0+10x30",
                **{**CHAT, "endpoint": "/embeddings", "api": "embeddings"},
                model="e",
                status_class="2xx",
            ),
            # messages on chat's upstream endpoint: 1 in 4 calls 5xx, paged on its own api
            _series("clexproxy_requests_total", "0+6x30", model="m", status_class="2xx", **{**CHAT, "api": "messages"}),
            _series("clexproxy_requests_total", "0+2x30", model="m", status_class="5xx", **{**CHAT, "api": "messages"}),
            _series("up", "1x5 0x25", instance="h1", job="clexproxy"),
            _series("clexproxy_workers", "4x30 3x30", instance="h1", job="clexproxy"),
        ],
        "alert_rule_test": [
            _fires(
                "ClexproxyHigh5xxRatio",
                "15m",
                {"severity": "critical", "endpoint": "/chat/completions", "api": "chat"},
                {"severity": "critical", "endpoint": "/chat/completions", "api": "messages"},
            ),
            _fires("ClexproxyModelAllFailing", "15m"),
            _fires("ClexproxyTargetDown", "15m", {"severity": "critical", "instance": "h1", "job": "clexproxy"}),
            _fires("ClexproxyAllTargetsDown", "15m", {"severity": "critical"}),
            _fires("ClexproxyNoWorkers", "15m"),
            _fires("ClexproxyWorkersLost", "45m", {"severity": "warning", "instance": "h1"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # a provider that never answered once, and a healthy one with a few 5xx
            _series("clexproxy_upstream_errors_total", "0+6x30", provider="down", kind="connect", instance="h1"),
            _series("clexproxy_upstream_ttfb_seconds_count", "0+60x30", provider="ok", instance="h1"),
            _series("clexproxy_upstream_errors_total", "0+3x30", provider="ok", kind="5xx", instance="h1"),
            # model m only fails; model m2 fails often but still succeeds
            _series("clexproxy_requests_total", "0+2x30", model="m", status_class="5xx", **CHAT),
            _series("clexproxy_requests_total", "0+2x30", model="m2", status_class="5xx", **CHAT),
            _series("clexproxy_requests_total", "0+1x30", model="m2", status_class="2xx", **CHAT),
        ],
        "alert_rule_test": [
            _fires("ClexproxyUpstreamErrorRatioHigh", "15m", {"severity": "warning", "provider": "down"}),
            _fires("ClexproxyModelAllFailing", "15m", {"severity": "critical", "model": "m"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            # every call spends 5-10 ms in the gateway
            _series("clexproxy_gateway_overhead_seconds_bucket", "0x30", le="0.005", stream="true", **CHAT),
            _series("clexproxy_gateway_overhead_seconds_bucket", "0+60x30", le="0.01", stream="true", **CHAT),
            _series("clexproxy_gateway_overhead_seconds_bucket", "0+60x30", le="+Inf", stream="true", **CHAT),
            _series("clexproxy_gateway_overhead_seconds_count", "0+60x30", stream="true", **CHAT),
            _series("clexproxy_redis_up", "1x5 0x25", instance="h1"),
            # quiet for 80 minutes, then 5 requests_per_minute refusals a second
            _series("clexproxy_rate_limited_total", "0x80 0+300x20", plan="free", limit="requests_per_minute"),
        ],
        "alert_rule_test": [
            _fires(
                "ClexproxyGatewayOverheadHigh",
                "20m",
                {"severity": "warning", "endpoint": "/chat/completions", "api": "chat", "stream": "true"},
            ),
            _fires("ClexproxyRedisDown", "10m", {"severity": "critical", "instance": "h1"}),
            _fires("ClexproxyRateLimitSurge", "75m"),
            _fires(
                "ClexproxyRateLimitSurge",
                "92m",
                {"severity": "warning", "plan": "free", "limit": "requests_per_minute"},
            ),
        ],
    },
]


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    doc = _yaml(ALERTS)
    # promtool compares annotations too; the checks here are about expressions and labels only.
    for rule in _alert_rules(doc):
        rule.pop("annotations", None)
    # JSON is YAML, so neither file needs a YAML writer.
    (tmp_path / "alerts.yml").write_text(json.dumps(doc), encoding="utf-8")
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": PROMTOOL_TESTS}
    (tmp_path / "tests.yml").write_text(json.dumps(spec), encoding="utf-8")
    _promtool("test", "rules", "tests.yml", cwd=tmp_path)


# -- the api label (issue 13: every ingress metered alike) ------------------------------------------------------

_API_LABELLED = re.compile(
    r"clexproxy_(requests_total|request_duration_seconds_bucket|gateway_overhead_seconds_bucket"
    r"|stream_ttft_seconds_bucket|tokens_total)\{([^}]*)\}"
)


def test_dashboard_filters_and_breaks_down_by_api() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["api"]["type"] == "query"
    assert variables["api"]["definition"] == 'label_values(clexproxy_requests_total{job=~"$job"}, api)'
    exprs = [target["expr"] for panel in _panels() for target in panel.get("targets", [])]
    selectors = [match.group(2) for expr in exprs for match in _API_LABELLED.finditer(expr)]
    assert selectors and all('api=~"$api"' in selector for selector in selectors)
    titles = {panel["title"] for panel in _panels()}
    assert {"Request rate by api and status class", "Error ratio by api", "Tokens by api and model"} <= titles
    assert any("sum by (le, api, stream)" in expr and "gateway_overhead" in expr for expr in exprs)
