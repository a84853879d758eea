"""Issue 10, item 19: every alert in deploy/alerts.yml is unit-tested by promtool (deploy/alerts.test.yml).

promtool comes from Debian's `prometheus` package, which `make test` installs (`make test-tools`): a missing
promtool fails these tests rather than skipping them, so the rules are never silently left untested.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "alerts.yml"
TESTS = DEPLOY / "alerts.test.yml"


def promtool(*args: str) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: `make test-tools` installs it (apt-get install prometheus)",
                    pytrace=False)
    done = subprocess.run([exe, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", RULES.name)


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", TESTS.name)


def test_every_alert_is_shown_firing_and_quiet() -> None:
    """Each alert has a case where it fires, with its annotations, and one where it must not."""
    alerts = {rule["alert"] for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule}
    spec = load(TESTS)
    assert spec["rule_files"] == [RULES.name]
    cases = [case for test in spec["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"
    for case in cases:
        for expected in case.get("exp_alerts") or []:
            assert expected.get("exp_annotations"), f"{case['alertname']}: annotations are part of the alert"


def test_redis_going_down_pages() -> None:
    """The case the issue found broken: a host whose Redis goes away raises ClexproxyRedisDown."""
    spec = load(TESTS)
    down = [
        case for test in spec["tests"] for case in test.get("alert_rule_test", [])
        if case["alertname"] == "ClexproxyRedisDown" and case.get("exp_alerts")
    ]
    assert down and all(alert["exp_labels"]["severity"] == "critical" for case in down for alert in case["exp_alerts"])
