"""The Grafana dashboard and Prometheus alert rules in `grafana/`, checked
with Prometheus' own `promtool`, and against the metrics replicas export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.promtool import promtool

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def run_promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def dashboard_queries() -> list[str]:
    dashboard = json.loads((GRAFANA / "dashboards" / "batchwarden.json").read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append(expr)
    return queries


def test_alert_rules_are_valid_and_pass_their_unit_tests():
    checked = run_promtool("check", "rules", str(GRAFANA / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(GRAFANA / "tests" / "alerts_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_dashboard_query_parses(tmp_path):
    """Each query becomes a recording rule, which promtool parses."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = [
        {"record": f"dashboard:query_{number}", "expr": expr}
        for number, expr in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout


def referenced_metrics() -> set[str]:
    alerts = (GRAFANA / "alerts.yml").read_text()
    text = alerts + "\n".join(dashboard_queries())
    return set(re.findall(r"\bbatchwarden_[a-z_]+", text))


def exported_samples(exposition: str) -> set[str]:
    """Sample names a scrape can carry, from its `# TYPE` lines."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        if kind == "counter" and name.endswith("_total"):
            name = name.removesuffix("_total")
        names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def check_exposition(exposition: str) -> None:
    """What `promtool check metrics` says of a scrape, and that every metric
    the dashboard and alerts use is in it."""
    linted = run_promtool("check", "metrics", stdin=exposition)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    missing = referenced_metrics() - exported_samples(exposition)
    assert missing == set(), f"used by grafana/ but not exported: {missing}"
