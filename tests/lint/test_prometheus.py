"""The Prometheus configuration (config/prometheus/) is valid and its alert rules do what they say:
`promtool check config`, `promtool check rules`, and `promtool test rules` on their unit tests
(tests/prometheus/alerts.test.yml), plus what promtool cannot know: every compose service is scraped,
under its own name, and every rule is tested firing and silent. No Docker."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml

from stack import METRICS_TARGETS, MONITORING_SERVICES, ROOT, SERVICES, run

CONFIG = ROOT / "config" / "prometheus" / "prometheus.yml"
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts.test.yml"
ALERTS = (
    "OrdersDeadLettered",
    "OrderBacklogWithoutConsumer",
    "BillingStoreOutage",
    "GatewayErrorRatio",
    "RouteLatencyP99",
    "TargetDown",
)


def promtool(*args: str) -> str:
    """Fail (not skip) without promtool: a missing one must not pass unnoticed."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: scripts/test.sh extracts it from Debian's prometheus package into the"
            " test venv (needs the apt package lists: apt-get update), or apt-get install prometheus"
        )
    result = run(path, *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_config() -> None:
    # rule_files are relative to the configuration's directory, where alerts.yml is, as in /etc/prometheus.
    assert "SUCCESS: 1 rule files found" in promtool("check", "config", str(CONFIG))


def test_promtool_check_rules() -> None:
    assert f"SUCCESS: {len(ALERTS)} rules found" in promtool("check", "rules", str(RULES))


def test_promtool_test_rules() -> None:
    promtool("test", "rules", str(RULE_TESTS))


def test_every_service_is_scraped_by_its_service_name() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == [RULES.name]
    jobs = {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert set(jobs) == {*SERVICES, *MONITORING_SERVICES}
    # Each service at the ports where the tests read its metrics (billing-app: its API and its consumer).
    expected: dict[str, list[str]] = {"prometheus": ["localhost:9090"]}
    for service, port in METRICS_TARGETS.values():
        expected.setdefault(service, []).append(f"{service}:{port}")
    assert jobs == expected


def test_every_alert_says_how_severe_and_what_to_do() -> None:
    assert [rule["alert"] for rule in rules()] == list(ALERTS)
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]


def test_the_billing_queue_name_is_never_hard_coded() -> None:
    """RABBITMQ_QUEUE is configurable: queues are told apart by the ".dlq" suffix of dead-letter queues."""
    for rule in rules():
        assert "billing_queue" not in rule["expr"], rule["alert"]
    queue_rules = {rule["alert"]: rule["expr"] for rule in rules() if "rabbitmq_queue" in rule["expr"]}
    assert 'queue=~".+\\\\.dlq"' in queue_rules["OrdersDeadLettered"]
    assert 'queue!~".+\\\\.dlq"' in queue_rules["OrderBacklogWithoutConsumer"]


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES.resolve()]
    firing: set[str] = set()
    silent: set[str] = set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    assert firing == set(ALERTS), f"never seen firing: {set(ALERTS) - firing}"
    assert silent == set(ALERTS), f"never seen silent: {set(ALERTS) - silent}"
