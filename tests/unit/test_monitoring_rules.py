"""The alert rules: promtool checks them and unit-tests every alert with synthetic series.

Each alert fires on a series that should fire it and stays silent on one that should not
(tests/unit/promtool/*.test.yml), with the thresholds and windows of the data defaults.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tasks.services.monitoring import DATA, rule_variables
from tests.prometheus_tools import render_rules, run, without_annotations

TESTS = Path(__file__).parent / "promtool"


@pytest.fixture(scope="module")
def rules() -> str:
    # The SSD tier of the real inventory's shape: pve's SSD pool, the guests' roots on it.
    ssd = [("ageis-node", "/"), ("monitoring", "/"), ("pve", "/ssd")]
    return render_rules(rule_variables(DATA.defaults(), ssd))


def alert_names(rules: str) -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", rules, re.M)


def test_promtool_accepts_the_rules(rules: str, tmp_path: Path) -> None:
    path = tmp_path / "homelab.rules.yml"
    path.write_text(rules)
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(re.findall(r"^\s+- (alert|record):", rules, re.M))
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_in_promtool_tests(rules: str, tmp_path: Path) -> None:
    (tmp_path / "homelab.rules.yml").write_text(without_annotations(rules))
    test_files = sorted(TESTS.glob("*.test.yml"))
    for test_file in test_files:
        shutil.copy(test_file, tmp_path)
    result = run("promtool", "test", "rules", *(f.name for f in test_files), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is tested firing (a non-empty exp_alerts) somewhere.
    text = "\n".join(f.read_text() for f in test_files)
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", text))
    assert set(alert_names(rules)) - firing == set()


def test_a_wrong_expectation_fails(rules: str, tmp_path: Path) -> None:
    """The harness can fail: an alert expected where the series should keep it silent."""
    (tmp_path / "homelab.rules.yml").write_text(without_annotations(rules))
    (tmp_path / "wrong.test.yml").write_text(
        "rule_files: [homelab.rules.yml]\nevaluation_interval: 1m\ntests:\n"
        "  - interval: 1m\n    input_series:\n"
        "      - series: 'up{instance=\"pve\",job=\"node-exporter\"}'\n        values: '1x15'\n"
        "    alert_rule_test:\n      - eval_time: 15m\n        alertname: HostDown\n"
        "        exp_alerts:\n          - exp_labels: {severity: critical, instance: pve,"
        " job: node-exporter}\n"
    )
    assert run("promtool", "test", "rules", "wrong.test.yml", cwd=tmp_path).returncode != 0


def test_every_alert_has_a_summary_and_a_runbook(rules: str) -> None:
    blocks = re.split(r"\n(?=\s+- (?:alert|record): )", rules)
    alerts = [block for block in blocks if re.match(r"\s+- alert: ", block)]
    assert len(alerts) == len(alert_names(rules)) >= 20
    for block in alerts:
        name = re.match(r"\s+- alert: (\w+)", block).group(1)
        assert re.search(r"^\s+summary: \S", block, re.M), name
        assert re.search(r"^\s+runbook: \"\S", block, re.M), name


def test_thresholds_and_windows_come_from_the_data(rules: str) -> None:
    values = {**DATA.defaults(), "alert_cpu_temp_celsius": 71, "alert_trend_window": "14d"}
    changed = render_rules(rule_variables(values))
    assert "homelab:cpu_temp_celsius:avg1h > 71" in changed
    assert "deriv(homelab:cpu_temp_celsius:avg1h[14d])" in changed
    assert "homelab:cpu_temp_celsius:avg1h > 80" in rules
