"""`floodgate serve` reloads on SIGHUP (README "Reloading"): the configuration's run-time
keys, the aliases and the TLS certificate, while a session opened before the reload goes on
to finish its transaction."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import smtplib
import ssl
import subprocess
from pathlib import Path

from tests.support import (
    FLOODGATE,
    ROOT,
    RelayProcess,
    floodgate,
    free_port,
    port_open,
    wait_until,
    write_config,
)
from tests.test_workers import children

ALIASES = "alice@example.org\nbob@example.org\ncarol@example.org\n"
MESSAGE = "From: s@sender.test\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def hup(relay: RelayProcess, outcome: str = "applied") -> str:
    """SIGHUP, then the reload's log line once it is written (its outcome checked)."""
    before = len(re.findall(r" reload (applied|failed)", relay.log()))
    relay.signal(signal.SIGHUP)

    def logged() -> bool:
        assert relay.proc is not None
        if relay.proc.poll() is not None:
            raise AssertionError(f"relay exited ({relay.proc.returncode}):\n{relay.log()}")
        return len(re.findall(r" reload (applied|failed)", relay.log())) > before

    wait_until(logged, 30, "the reload's log line")
    line = re.findall(r".* reload (?:applied|failed).*", relay.log())[before]
    assert f"outcome={outcome}" in line, relay.log()
    return line


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def session(relay: RelayProcess) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", relay.port, timeout=15)
    smtp.ehlo("client.test")
    return smtp


def open_transaction(smtp: smtplib.SMTP, *rcpts: str) -> None:
    assert smtp.mail("s@sender.test")[0] == 250
    for rcpt in rcpts:
        assert smtp.rcpt(rcpt)[0] == 250


def finish(smtp: smtplib.SMTP) -> int:
    code, _ = smtp.data(MESSAGE)
    smtp.quit()
    return code


def rcpt_codes(relay: RelayProcess, *rcpts: str) -> list[int]:
    with session(relay) as smtp:
        assert smtp.mail("s@sender.test")[0] == 250
        return [smtp.rcpt(r)[0] for r in rcpts]


def test_new_settings_for_new_sessions_open_one_finishes(start_relay, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES)
    assert rcpt_codes(relay, "someone@new.test") == [554]  # not hosted yet: no relaying
    before = session(relay)
    open_transaction(before, "alice@example.org")

    edit(relay.config, "max_recipients = 5", "max_recipients = 2")
    with relay.config.open("a") as f:
        f.write('\n[domains."new.test"]\nnext_hop = "127.0.0.1:2600"\ncatch_all = true\n')
    line = hup(relay)
    assert "relay.max_recipients" in line and 'domains.new.test' in line, line

    assert rcpt_codes(relay, "anyone@new.test") == [250]
    assert rcpt_codes(relay, "alice@example.org", "bob@example.org",
                      "carol@example.org") == [250, 250, 452]
    # the session opened before the reload was not dropped: it completes its message
    assert before.rcpt("bob@example.org")[0] == 250
    assert finish(before) == 250


def test_invalid_configuration_is_reported_and_the_old_one_kept(start_relay,  # type: ignore[no-untyped-def]
                                                                 sqlite_url) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES)
    before = session(relay)
    open_transaction(before, "alice@example.org")
    edit(relay.config, "max_recipients = 5", "max_recipients = 0\nmax_recipeints = 2")
    checked = floodgate(relay.config, "check-config", check=False)
    assert checked.returncode == 2
    problems = checked.stderr.strip().splitlines()
    assert len(problems) == 2, checked.stderr

    line = hup(relay, "failed")
    assert relay.proc is not None and relay.proc.poll() is None  # still serving
    for problem in problems:  # the same words as check-config
        assert problem in relay.log(), relay.log()
    assert "kept" in line
    # the running settings still apply: five recipients, the sixth over the limit
    assert rcpt_codes(relay, *[f"{n}@catchall.test" for n in "abcdef"]) == [250] * 5 + [452]
    assert finish(before) == 250


def test_restart_only_key_warns_and_keeps_the_running_value(start_relay,  # type: ignore[no-untyped-def]
                                                            sqlite_url) -> None:
    relay = start_relay(sqlite_url, aliases=ALIASES)
    other = free_port()
    edit(relay.config, 'hostname = "mx1.example.net"', 'hostname = "mx9.example.net"')
    edit(relay.config, f'listen = ["127.0.0.1:{relay.port}"]',
         f'listen = ["127.0.0.1:{relay.port}", "127.0.0.1:{other}"]')
    edit(relay.config, "max_recipients = 5", "max_recipients = 1")
    line = hup(relay)
    assert " WARNING " in line, line
    kept = re.search(r"kept=(\S+)", line)
    assert kept is not None and set(kept.group(1).split(",")) == {"relay.hostname",
                                                                  "relay.listen"}, line
    assert "changed=relay.max_recipients" in line, line
    with session(relay) as smtp:  # the running hostname, the running sockets
        assert "mx1.example.net" in smtp.ehlo_resp.decode()
    assert not port_open("127.0.0.1", other)
    assert rcpt_codes(relay, "alice@example.org", "bob@example.org") == [250, 452]


def make_cert(directory: Path, name: str) -> str:
    """A self-signed certificate and key as cert.pem/key.pem; returns its SHA-256."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(directory / "key.new"),
                    "-out", str(directory / "cert.new")], check=True, capture_output=True)
    # as a renewal does: each file replaced whole
    (directory / "cert.new").replace(directory / "cert.pem")
    (directory / "key.new").replace(directory / "key.pem")
    der = ssl.PEM_cert_to_DER_cert((directory / "cert.pem").read_text())
    return hashlib.sha256(der).hexdigest()


def tls_session(relay: RelayProcess) -> tuple[smtplib.SMTP, str]:
    smtp = session(relay)
    smtp.starttls(context=ssl._create_unverified_context())
    smtp.ehlo("client.test")
    der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    return smtp, hashlib.sha256(der).hexdigest()


def test_renewed_certificate_for_new_connections(start_relay, sqlite_url,  # type: ignore[no-untyped-def]
                                                 tmp_path: Path) -> None:
    old = make_cert(tmp_path, "old.example.net")
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra_relay='tls = { cert = "cert.pem", key = "key.pem" }')
    before, seen = tls_session(relay)
    assert seen == old
    open_transaction(before, "alice@example.org")

    new = make_cert(tmp_path, "new.example.net")
    assert "tls=reloaded" in hup(relay)
    after, seen = tls_session(relay)
    assert seen == new
    open_transaction(after, "bob@example.org")
    assert finish(after) == 250
    assert finish(before) == 250  # the session on the old certificate goes on


def test_every_worker_reloads(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "relay.toml", store_url=f"sqlite:///{tmp_path}/fg.db",
                          port=port)
    log_path = tmp_path / "relay.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*FLOODGATE, "-c", str(config), "serve", "--workers", "2"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    workers: list[int] = []
    try:
        wait_until(lambda: log_path.read_text().count(" ready ") >= 2, 60, "two workers ready")
        workers = children(proc.pid)
        edit(config, "max_recipients = 5", "max_recipients = 3")
        proc.send_signal(signal.SIGHUP)

        def reloaded() -> set[str]:
            return set(re.findall(r" reload applied .*worker=(\d+).*changed=relay\."
                                  r"max_recipients", log_path.read_text()))

        def both() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"supervisor exited:\n{log_path.read_text()}")
            return reloaded() == {"0", "1"}

        wait_until(both, 30, "both workers' reload lines")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:  # still there if the supervisor died first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
