"""The shipped monitoring (scripts/monitoring): the alert rules pass `promtool check rules`
and their unit tests (`promtool test rules`: each alert fires when it should), and the
dashboard and the rules name only metrics a running relay exports (a renamed metric would
leave a panel empty and an alert silent, without a word)."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import subprocess
import urllib.request
from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, free_port, wait_until
from tests.test_metrics import scrape, value
from tests.test_smtp import ALIASES

pytest_plugins = ["tests.scanner_fixtures"]

MONITORING = ROOT / "scripts" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\bfloodgate_[a-z0-9_]+\b")
# the series a family of each type has (what an expression may name)
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",), "summary": ("_sum", "_count", "")}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """/usr/bin/promtool, from Debian's `prometheus` package (scripts/setup installs it)."""
    return subprocess.run(["promtool", *args], capture_output=True, text=True,
                          cwd=MONITORING, timeout=120)


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_alert_rules_fire_in_promtool_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def expressions(node: object) -> Iterator[str]:
    """Every `expr` in the dashboard (panel targets) and the variables' queries."""
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "definition") and isinstance(item, str):
                yield item
            else:
                yield from expressions(item)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_dashboard_and_alerts_name_only_exported_metrics(start_relay, sqlite_url,  # type: ignore[no-untyped-def]
                                                          clamd) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a DNS server that
        silent.bind(("127.0.0.1", 0))  # never answers: the DNSBL zone times out
        relay = start_relay(sqlite_url, aliases=ALIASES, extra=f"""
[metrics]
listen = "127.0.0.1:{port}"
[clamav]
address = "{clamd.unix_address}"
[dnsbl]
nameserver = "127.0.0.1:{silent.getsockname()[1]}"
timeout = "0.2s"
[dnsbl.zones."slow.example"]
[blocklist]
protect_loopback = false
""")
        # from 127.0.0.5: the relay's own address (127.0.0.1, where it listens) is not asked
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                          source_address=("127.0.0.5", 0)) as smtp:
            smtp.noop()
        wait_until(lambda: value(scrape(port), "floodgate_dnsbl_timeouts_total",
                                 zone="slow.example") >= 1, what="a DNSBL timeout counted")
    families = list(text_string_to_metric_families(metrics_text(port)))
    exported = {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}
    exported |= {s.name for f in families for s in f.samples}

    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in expressions(dashboard) for name in METRIC.findall(expr)}
    assert len(used) >= 14, used  # every family the relay exports has a panel
    assert used - exported == set(), "dashboard names metrics the relay does not export"
    in_rules = set(METRIC.findall(RULES.read_text()))
    assert {"floodgate_queue_oldest_message_age_seconds", "floodgate_scanner_up",
            "floodgate_events_dropped_total", "floodgate_blocked_hosts"} <= in_rules
    assert in_rules - exported == set(), "alert rules name metrics the relay does not export"

