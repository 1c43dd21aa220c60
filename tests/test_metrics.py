"""Prometheus metrics from a running relay, scraped over HTTP while traffic flows."""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import smtplib
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import FLOODGATE, ROOT, floodgate, free_port, wait_until, write_config
from tests.test_content import eml, scanners
from tests.test_smtp import ALIASES, client
from tests.test_workers import children, established_inodes, socket_inodes

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


def test_metrics_count_every_worker(tmp_path: Path, clamd) -> None:  # type: ignore[no-untyped-def]
    """`serve --workers 2`: sessions spread over both workers, and the one endpoint counts
    them all (it counted worker 0's alone); the oldest queued message's age, the delivery
    outcomes, build info, and a dead clamd address's up gauge at 0."""
    port, metrics = free_port(), free_port()
    dead = tmp_path / "no-clamd.sock"  # first in turn: each worker's first scan finds it dead
    hop = socket.socket()  # bound, never listening: the next hop refuses every connection
    hop.bind(("127.0.0.1", 0))
    config = write_config(
        tmp_path / "relay.toml", store_url=f"sqlite:///{tmp_path}/fg.db", port=port,
        extra_delivery='enabled = true\nscan_interval = "0.5s"',
        extra=f'[domains."down.test"]\nnext_hop = "127.0.0.1:{hop.getsockname()[1]}"\n'
              f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
              f'[clamav]\naddress = ["{dead}", "{clamd.unix_address}"]\ntimeout = "3s"\n')
    (tmp_path / "aliases.txt").write_text(ALIASES + "bob@down.test\n")
    floodgate(config, "aliases", "import", "--format", "list", str(tmp_path / "aliases.txt"))
    log_path = tmp_path / "relay.log"
    files = tmp_path / "tmp"  # where the supervisor makes the workers' metric directory
    files.mkdir()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*FLOODGATE, "-c", str(config), "serve", "--workers", "2"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "TMPDIR": str(files)})
    try:
        wait_until(lambda: log_path.read_text().count(" ready ") >= 2, 60, "two workers ready")
        workers = children(proc.pid)
        assert len(workers) == 2, log_path.read_text()
        assert [d.name[:18] for d in files.iterdir()] == ["floodgate-metrics-"]

        # 40 sessions open at once: the kernel spreads them over both workers (all on one
        # worker: about 2**-39), as the sockets each worker holds show
        sessions = [smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(40)]
        established = established_inodes(port)
        per_worker = {pid: len(socket_inodes(pid) & established) for pid in workers}
        assert all(n > 0 for n in per_worker.values()), per_worker
        wait_until(lambda: value(scrape(metrics), "floodgate_smtp_connections") == 40,
                   what="every worker's connections in the gauge")
        for smtp in sessions:
            smtp.ehlo("client.test")
            assert smtp.docmd("MAIL FROM:<s@sender.test>")[0] == 250
            assert smtp.docmd("RCPT TO:<ghost@example.org>")[0] == 550
            smtp.quit()
        samples = scrape(metrics)
        assert decisions(samples, "rcpt", "reject", "unknown_rcpt") == 40
        assert decisions(samples, "connect", "accept", "connect") == 40

        # worker 1 dies and is restarted: what it counted stays counted (a total that went
        # back would read as a counter reset, and rate() would count it all again)
        one = re.search(r"worker started worker=1 pid=(\d+)", log_path.read_text())
        assert one is not None
        os.kill(int(one.group(1)), signal.SIGKILL)
        wait_until(lambda: log_path.read_text().count(" ready ") >= 3, 60, "worker 1 back")
        samples = scrape(metrics)
        assert decisions(samples, "rcpt", "reject", "unknown_rcpt") == 40
        assert decisions(samples, "connect", "accept", "connect") == 40

        # a message: scanned (the dead clamd first), queued, deferred (next hop down)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.sendmail("s@sender.test", ["bob@down.test"], eml("clean.eml"))
        live = clamd.unix_address

        def scanners_seen() -> bool:
            s = scrape(metrics)
            return (value(s, "floodgate_scanner_up", scanner="clamav", address=str(dead)) == 0
                    and value(s, "floodgate_scanner_up", scanner="clamav", address=live) == 1)

        wait_until(scanners_seen, what="the dead clamd address down, the live one up")
        wait_until(lambda: value(scrape(metrics), "floodgate_delivery_outcomes_total",
                                 outcome="deferred", status="4.4") >= 1,
                   what="a deferred delivery (next hop down: 4.4.x)")
        wait_until(lambda: value(scrape(metrics), "floodgate_smtp_connections") == 0,
                   what="connection gauge back to 0")
        samples = scrape(metrics)
        assert value(samples, "floodgate_queue_oldest_message_age_seconds") > 0
        assert value(samples, "floodgate_spool_messages") == 1
        assert decisions(samples, "data", "accept", "accepted") == 1
        assert value(samples, "floodgate_scan_duration_seconds_count", scanner="clamav") == 1
        version = importlib.metadata.version("floodgate")
        info = [labels for (name, labels), v in samples.items()
                if name == "floodgate_build_info" and v == 1]
        assert len(info) == 1 and ("version", version) in info[0], info

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        assert list(files.iterdir()) == []  # the metric files go with the supervisor
    finally:
        hop.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
