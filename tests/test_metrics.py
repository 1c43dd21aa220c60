"""Prometheus metrics from a running relay, scraped over HTTP while traffic flows."""

from __future__ import annotations

import smtplib
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import floodgate, free_port, wait_until
from tests.test_content import eml, scanners
from tests.test_smtp import ALIASES, client

pytest_plugins = ["tests.scanner_fixtures"]


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def decisions(samples, stage: str, action: str, reason: str) -> float:  # type: ignore[no-untyped-def]
    return value(samples, "floodgate_smtp_decisions_total", stage=stage, action=action,
                 reason=reason)


def test_metrics_move_with_traffic(start_relay, sqlite_url, clamd, spamd) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=scanners(clamd.unix_address, spamd.address)
                        + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    before = scrape(port)
    assert decisions(before, "rcpt", "reject", "unknown_rcpt") == 0
    assert value(before, "floodgate_smtp_connections") == 0
    assert value(before, "floodgate_blocked_hosts") == 0

    with client(relay) as smtp:
        assert value(scrape(port), "floodgate_smtp_connections") == 1
        for rcpt in ("ghost1@example.org", "ghost2@example.org"):
            assert smtp.docmd("MAIL FROM:<s@sender.test>")[0] == 250
            assert smtp.docmd(f"RCPT TO:<{rcpt}>")[0] == 550
            smtp.rset()
        for _ in range(2):  # the same message twice: the second is a verdict cache hit
            smtp.sendmail("s@sender.test", ["bob@example.org"], eml("clean.eml"))
        with pytest.raises(smtplib.SMTPDataError) as virus:
            smtp.sendmail("s@sender.test", ["bob@example.org"], eml("eicar.eml"))
        assert virus.value.smtp_code == 554
    wait_until(lambda: value(scrape(port), "floodgate_smtp_connections") == 0,
               what="connection gauge back to 0")

    after = scrape(port)
    assert decisions(after, "rcpt", "reject", "unknown_rcpt") == 2
    assert decisions(after, "connect", "accept", "connect") == 1
    assert decisions(after, "data", "accept", "accepted") == 2
    assert decisions(after, "data", "reject", "virus") == 1
    for scanner in ("clamav", "spamassassin"):
        count = value(after, "floodgate_scan_duration_seconds_count", scanner=scanner)
        assert count >= 2, scanner
        assert value(after, "floodgate_scan_duration_seconds_sum", scanner=scanner) > 0
    assert value(after, "floodgate_cache_hits_total", cache="clamav") > 0
    assert ("floodgate_events_dropped_total", frozenset()) in after
    wait_until(lambda: value(scrape(port), "floodgate_events_written_total") >= 9,
               what="events written")
    assert value(scrape(port), "floodgate_spool_messages") >= 1  # next hop is down: queued

    floodgate(relay.config, "block", "add", "192.0.2.66", "--for", "1h")
    wait_until(lambda: value(scrape(port), "floodgate_blocked_hosts") == 1,
               what="blocked hosts gauge")


def test_metrics_address_in_use_is_a_clear_startup_error(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        relay = start_relay(sqlite_url, wait=False,
                            extra=f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        assert relay.proc is not None
        assert relay.proc.wait(30) == 1
    assert f"metrics.listen 127.0.0.1:{port}: Address already in use" in relay.log()


def test_metrics_depend_on_no_relay_module() -> None:
    """The metrics read the relay through the Watched protocol (each part's public
    accessors), so metrics.py imports nothing of relay: not the server it is made by, not
    even for a type (that was an import cycle, and its private reads broke unseen)."""
    import ast
    from pathlib import Path

    import relay.service.metrics as metrics

    tree = ast.parse(Path(metrics.__file__).read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m == "relay" or m.startswith("relay.")] == []
