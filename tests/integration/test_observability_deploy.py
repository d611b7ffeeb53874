"""The operator's view in deploy/: Prometheus alert rules checked and unit-tested by
Debian's promtool, the Grafana dashboard parsed, the cron example parsed; every metric
they name exists in server/metrics.py, and every contract-section-6 metric is on the
dashboard and in docs/OPERATIONS.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from jobs.run import JOBS
from server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
CONTRACT = (
    "parley_ws_connections",
    "parley_ws_frames_total",
    "parley_turns_total",
    "parley_errors_total",
    "parley_dispatch_seconds",
    "parley_relay_seconds",
    "parley_upstream_first_token_seconds",
    "parley_ws_dropped_total",
    "parley_http_requests_total",
)
_NAME = re.compile(r"\bparley_[a-z_]+")


def exported_names() -> set[str]:
    """Every series name the registry can export (counters' _total, histograms' parts)."""
    names: set[str] = set()
    for metric in Metrics().registry.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names |= {metric.name + s for s in ("_bucket", "_count", "_sum")}
    return names


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make services` (deploy/dev/services.sh) installs it"
    return path


def test_alert_rules_shape_and_metrics() -> None:
    doc = yaml.safe_load((PROM / "parley-alerts.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    known = exported_names()
    for rule in rules:
        assert rule["alert"].startswith("Parley") and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert rule["annotations"]["summary"]
        unknown = set(_NAME.findall(rule["expr"])) - known
        assert not unknown, (rule["alert"], unknown)
    exprs = " ".join(r["expr"] for r in rules)
    # the list: error rate, breaker open, relay p99, loop lag, Redis, retention
    for needle in (
        "parley_errors_total",
        "parley_upstream_breaker_open",
        "parley_relay_seconds_bucket",
        "parley_event_loop_lag_seconds",
        "parley_cache_degraded",
        'parley_job_last_success_timestamp_seconds{job="retention"}',
    ):
        assert needle in exprs, needle


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    r = subprocess.run(
        [promtool(), "check", "rules", "parley-alerts.yaml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [promtool(), "test", "rules", "parley-alerts.test.yaml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_grafana_dashboard() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "parley-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] == "Parley"
    exprs: list[str] = []
    ids = set()
    for panel in dash["panels"]:
        assert panel["type"] in ("timeseries", "stat") and panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        ids.add(panel["id"])
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            exprs.append(target["expr"])
    assert len(ids) == len(dash["panels"])
    named = {n for e in exprs for n in _NAME.findall(e)}
    assert not named - exported_names()
    for metric in CONTRACT:
        assert any(n == metric or n.startswith(metric + "_") for n in named), metric


def test_operations_doc_lists_every_metric() -> None:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    families = {m.name for m in Metrics().registry.collect()}
    for family in families:
        assert f"`{family}" in text, family


def test_cron_example() -> None:
    lines = [
        line
        for line in (ROOT / "deploy" / "cron" / "parley.crontab").read_text().splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    jobs = []
    for line in lines:
        fields = line.split(None, 6)
        minute, hour = int(fields[0]), int(fields[1])
        assert 0 <= minute < 60 and 0 <= hour < 24 and fields[2:5] == ["*", "*", "*"]
        assert fields[5] == "parley"
        m = re.search(r"parley jobs run ([a-z-]+)$", fields[6])
        assert m, line
        jobs.append(m.group(1))
    assert sorted(jobs) == sorted(JOBS)


def test_prometheus_operator_rule_is_the_same() -> None:
    plain = yaml.safe_load((PROM / "parley-alerts.yaml").read_text())
    crd = yaml.safe_load((ROOT / "deploy" / "k8s" / "prometheusrule.yaml").read_text())
    assert crd["kind"] == "PrometheusRule" and crd["metadata"]["name"] == "parley"
    assert crd["spec"]["groups"] == plain["groups"]
