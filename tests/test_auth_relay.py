"""Mail authentication in a running relay: SPF, DMARC and Authentication-Results against a
real nsd serving the senders' zones; a name server that never answers for temperror."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from tests.dkim_support import Key, ed25519_key, rsa_key
from tests.dns_server import NameServer, run_nsd, silent_nameserver
from tests.hardening_support import events, spooled
from tests.support import RelayProcess, floodgate, free_port, unref, write_config

ALIASES = "alice@example.org\nbob@example.net\n"
LIMIT = " ".join(f"a:h{i}.sender.test" for i in range(11))  # 11 lookups: past the limit
ZONE = [
    'pass IN TXT "v=spf1 ip4:127.0.0.1 -all"',
    'fail IN TXT "v=spf1 -all"',
    'soft IN TXT "v=spf1 ~all"',
    'neutral IN TXT "v=spf1 ?all"',
    "none IN A 192.0.2.1",
    f'perm IN TXT "v=spf1 {LIMIT} -all"',
    *(f"h{i} IN A 192.0.2.{i + 1}" for i in range(11)),
    '_dmarc.fail IN TXT "v=DMARC1; p=reject"',
    '_dmarc.pass IN TXT "v=DMARC1; p=reject"',
    '_dmarc.soft IN TXT "v=DMARC1; p=quarantine"',
    '_dmarc.none IN TXT "v=DMARC1; p=none"',
]
# the organisational domain's record (org.test) covers sub.org.test: its sp= applies
ORG = ['_dmarc IN TXT "v=DMARC1; p=none; sp=reject"', 'sub IN TXT "v=spf1 -all"']


# signed.test signs its mail but its SPF fails from here (it is sent through a host it does
# not list): DMARC can pass only by the aligned DKIM signature. lists.test is a mailing list
# the tests trust as an ARC sealer; rogue.test seals as well, but nobody trusts it.
SIGNED, TRUSTED, ROGUE = "signed.test", "lists.test", "rogue.test"


@dataclass(frozen=True)
class Keys:
    rsa: Key
    ed25519: Key


def message(sender: str, extra: str = "") -> bytes:
    return (f"{extra}From: Someone <{sender}>\r\nTo: alice@example.org\r\n"
            "Subject: hi\r\n\r\nHello.\r\n").encode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(rsa_key(tmp_path_factory.mktemp("keys")), ed25519_key())


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[NameServer]:
    signed = ['@ IN TXT "v=spf1 -all"', '_dmarc IN TXT "v=DMARC1; p=reject"',
              keys.rsa.record("rsa"), keys.ed25519.record("ed")]
    zones = {"sender.test": ZONE, "org.test": ORG, SIGNED: signed,
             TRUSTED: [keys.rsa.record("arc")], ROGUE: [keys.rsa.record("arc")]}
    with run_nsd(tmp_path_factory.mktemp("auth"), zones) as server:
        yield server


def signed(key: Key, selector: str, body: bytes, **kw: object) -> bytes:
    """`body` with a DKIM-Signature of signed.test made with `key`."""
    header = dkim.sign(body, selector.encode(), SIGNED.encode(), key.private,
                       signature_algorithm=key.algorithm, **kw)  # type: ignore[arg-type]
    return header + body


def sealed(body: bytes, key: Key, sealer: str) -> bytes:
    """`body` as a mailing list at `sealer` passes it on: its Authentication-Results (it saw
    SPF pass) and the ARC set it seals over them."""
    ar = f"Authentication-Results: {sealer}; spf=pass smtp.mailfrom=example.test\r\n".encode()
    arc_set = dkim.arc_sign(ar + body, b"arc", sealer.encode(), key.private, sealer.encode())
    assert arc_set, "dkimpy sealed nothing"
    return b"".join(arc_set) + ar + body


def auth_relay(start_relay, url: str, nameserver: str, extra: str = "") -> RelayProcess:  # type: ignore[no-untyped-def]
    return start_relay(url, aliases=ALIASES, extra=f"""
[auth]
enabled = true
nameserver = "{nameserver}"
timeout = 1.0
{extra}
""")


def send(relay: RelayProcess, sender: str, rcpts: list[str], body: bytes,
         helo: str = "client.test") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname=helo, timeout=30) as smtp:
        smtp.ehlo(helo)
        smtp.mail(sender)
        for r in rcpts:
            smtp.rcpt(r)
        code, text = smtp.data(body)
        return code, text.decode()


def last_spooled(relay: RelayProcess) -> bytes:
    files = [p for p in spooled(relay)]
    assert files
    return max(files, key=lambda p: p.stat().st_mtime_ns).read_bytes()


def ar_of(spooled_text: bytes) -> str:
    lines = spooled_text.decode().split("\r\n")
    ours = "Authentication-Results: mx1.example.net;"
    found = [i for i, line in enumerate(lines) if line.startswith(ours)]
    assert len(found) == 1, spooled_text.decode()
    i = found[0]
    text = lines[i]
    while lines[i + 1].startswith(("\t", " ")):
        i += 1
        text += " " + lines[i].strip()
    return text


def test_spf_results_and_authentication_results(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                dns: NameServer) -> None:
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver)
    expected = {"pass": "pass", "soft": "softfail", "neutral": "neutral", "none": "none",
                "perm": "permerror"}
    for label, result in expected.items():
        sender = f"s@{label}.sender.test"
        code, _ = send(relay, sender, ["alice@example.org"], message(sender))
        assert code == 250, label
        ar = ar_of(last_spooled(relay))
        assert ar.startswith("Authentication-Results: mx1.example.net; "), ar
        assert f"spf={result}" in ar and f"smtp.mailfrom={sender}" in ar, ar
        assert f"header.from={label}.sender.test" in ar, ar
    # an aligned SPF pass under p=reject: dmarc=pass
    assert "dmarc=pass" in ar_of(send_and_read(relay, "s@pass.sender.test"))
    # quarantine: accepted and tagged; softfail recorded
    spooled_text = send_and_read(relay, "s@soft.sender.test")
    assert "dmarc=fail" in ar_of(spooled_text)
    assert b"\r\nX-Floodgate-DMARC: fail policy=quarantine" in b"\r\n" + spooled_text
    # the null sender: SPF of the HELO name
    code, _ = send(relay, "", ["alice@example.org"], message("x@pass.sender.test"),
                   helo="pass.sender.test")
    assert code == 250
    assert "spf=pass (" in ar_of(last_spooled(relay))
    assert "smtp.helo=pass.sender.test" in ar_of(last_spooled(relay))
    found = events(sqlite_url, lambda e: e.reason in ("spf_softfail", "dmarc_quarantine"),
                   at_least=3)
    assert {e.reason for e in found} == {"spf_softfail", "dmarc_quarantine"}
    assert all("from=soft.sender.test" in e.detail for e in found)


def send_and_read(relay: RelayProcess, sender: str) -> bytes:
    code, _ = send(relay, sender, ["alice@example.org"], message(sender))
    assert code == 250
    return last_spooled(relay)


def test_dmarc_reject_is_refused_tagged_or_recorded_per_domain(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                              dns: NameServer) -> None:
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver,
                       '[auth.domains]\n"example.org" = "tag"\n"example.net" = "reject"\n')
    sender = "s@fail.sender.test"
    before = len(spooled(relay))
    code, text = send(relay, sender, ["bob@example.net"], message(sender))
    assert code == 550
    assert unref(f"{code} {text}") == (
        "550 5.7.1 DMARC policy of fail.sender.test rejects this message")
    assert len(spooled(relay)) == before
    refused = events(sqlite_url, lambda e: e.reason == "dmarc_reject" and e.action == "reject")
    assert refused[0].code == 550 and "spf=fail" in refused[0].detail
    events(sqlite_url, lambda e: e.reason == "spf_fail")
    # the organisational domain's sp=reject covers a subdomain without a record
    code, _ = send(relay, "s@sub.org.test", ["bob@example.net"], message("s@sub.org.test"))
    assert code == 550
    # example.org tags: accepted, the failure in the headers
    code, _ = send(relay, sender, ["alice@example.org"], message(sender))
    assert code == 250
    spooled_text = last_spooled(relay)
    assert "dmarc=fail" in ar_of(spooled_text)
    assert b"X-Floodgate-DMARC: fail policy=reject" in spooled_text
    # to both: the strictest (reject)
    code, _ = send(relay, sender, ["alice@example.org", "bob@example.net"], message(sender))
    assert code == 550


def test_findings_are_counted_per_host_and_from_domain_and_explained(  # type: ignore[no-untyped-def]
        start_relay, sqlite_url: str, dns: NameServer) -> None:
    """Weighted by [scoring.weights], counted by `report hosts --reason` and `report auth`
    (per From domain), explained by `hosts show`; a refused message counts refused once."""
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver)
    assert send(relay, "s@fail.sender.test", ["alice@example.org"],
                message("s@fail.sender.test"))[0] == 550
    assert send(relay, "s@soft.sender.test", ["alice@example.org"],
                message("s@soft.sender.test"))[0] == 250
    events(sqlite_url, lambda e: e.reason == "dmarc_quarantine")
    config = relay.config
    by_domain = json.loads(floodgate(config, "report", "auth", "--format", "json").stdout)
    assert by_domain == [
        {"from_domain": "fail.sender.test", "spf_fail": 1, "spf_softfail": 0, "dkim_fail": 0,
         "dmarc_reject": 1, "dmarc_quarantine": 0, "total": 2},
        {"from_domain": "soft.sender.test", "spf_fail": 0, "spf_softfail": 1, "dkim_fail": 0,
         "dmarc_reject": 0, "dmarc_quarantine": 1, "total": 2}]
    hosts = json.loads(floodgate(config, "report", "hosts", "--reason", "spf_fail",
                                 "--format", "json").stdout)
    assert [h["host"] for h in hosts] == ["127.0.0.1"]
    assert hosts[0]["rejected"] == 1 and hosts[0]["accepted"] == 1
    shown = floodgate(config, "hosts", "show", "127.0.0.1").stdout
    assert "DMARC fail under p=reject: the From domain asks that this be refused " \
           "(From: fail.sender.test)" in " ".join(shown.split())


def test_dmarc_reject_none_only_records(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                        dns: NameServer) -> None:
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver, 'dmarc_reject = "none"')
    sender = "s@fail.sender.test"
    spooled_text = send_and_read(relay, sender)
    assert "dmarc=fail" in ar_of(spooled_text)
    assert b"X-Floodgate-DMARC" not in spooled_text
    accepted = events(sqlite_url, lambda e: e.reason == "dmarc_reject")
    assert accepted[0].action == "accept" and "action=none" in accepted[0].detail


def test_sender_supplied_results_with_our_id_are_removed(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                         dns: NameServer) -> None:
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver)
    forged = ("Authentication-Results: MX1.example.net;\r\n\tspf=pass smtp.mailfrom=x\r\n"
              "ARC-Authentication-Results: i=1; mx1.example.net; dmarc=pass\r\n"
              "Authentication-Results: other.example; spf=fail\r\n")
    spooled_text = send_and_read_extra(relay, "s@soft.sender.test", forged, "alice@example.org")
    text = spooled_text.decode()
    assert text.count("Authentication-Results: mx1.example.net;") == 1
    assert "MX1.example.net" not in text and "ARC-Authentication-Results" not in text
    assert "Authentication-Results: other.example; spf=fail" in text
    assert "spf=softfail" in ar_of(spooled_text)


def test_forged_results_dressed_up_as_ours_are_removed(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                       dns: NameServer) -> None:
    """Each way RFC 8601 / RFC 5322 let a sender spell our authserv-id that a downstream
    parser (authres, Sieve) reads as ours: nested comments, a quoted string, a trailing
    dot, a comment before an ARC field's instance."""
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver)
    forged = ("Authentication-Results: ((nested)) mx1.example.net; dmarc=pass forged=1\r\n"
              "Authentication-Results: \"MX1.example.net\"; dmarc=pass forged=2\r\n"
              "Authentication-Results: mx1.example.net.; dmarc=pass forged=3\r\n"
              "Authentication-Results: (a \\) b)\r\n mx1.example.net; dmarc=pass forged=4\r\n"
              "ARC-Authentication-Results: (c) i=1; mx1.example.net; dmarc=pass forged=5\r\n"
              "ARC-Authentication-Results: mx1.example.net; dmarc=pass forged=6\r\n"
              "Authentication-Results: \"other.example\"; spf=fail\r\n")
    text = send_and_read_extra(relay, "s@soft.sender.test", forged, "alice@example.org").decode()
    assert "forged=" not in text, text
    assert 'Authentication-Results: "other.example"; spf=fail' in text
    assert "dmarc=pass" not in ar_of(text.encode())


def send_and_read_extra(relay: RelayProcess, sender: str, extra: str, rcpt: str) -> bytes:
    code, _ = send(relay, sender, [rcpt], message(sender, extra))
    assert code == 250
    return last_spooled(relay)


def test_dns_timeout_is_temperror_never_a_refusal(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    with silent_nameserver() as silent:
        relay = auth_relay(start_relay, sqlite_url, silent)
        sender = "s@fail.sender.test"
        code, _ = send(relay, sender, ["alice@example.org"], message(sender))
        assert code == 250
        ar = ar_of(last_spooled(relay))
        assert "spf=temperror" in ar and "dmarc=temperror" in ar, ar


def test_scan_prints_the_results_without_a_relay(tmp_path: Path, sqlite_url: str,
                                                 dns: NameServer) -> None:
    """No scanner configured, [auth] not enabled: `scan --client` still checks, with the
    section's name server; exit 1 when the relay would refuse."""
    config = write_config(tmp_path / "scan.toml", store_url=sqlite_url, port=free_port(),
                          extra=f'[auth]\nnameserver = "{dns.nameserver}"\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("s@fail.sender.test").replace(b"\r\n", b"\n"))
    args = ["scan", str(eml), "--client", "127.0.0.1", "--helo", "client.test",
            "--from", "s@fail.sender.test"]
    run = floodgate(config, *args, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith("Authentication-Results: mx1.example.net; spf=fail"), run.stdout
    assert "dmarc=fail (p=reject) header.from=fail.sender.test" in run.stdout
    assert "Relay  refused in session (550 5.7.1); events: spf_fail, dmarc_reject" in run.stdout
    found = json.loads(floodgate(config, *args, "--rcpt", "alice@example.org",
                                 "--format", "json", check=False).stdout)["auth"]
    assert found["spf"]["result"] == "fail" and found["dmarc"]["policy"] == "reject"
    assert found["action"] == "reject" and found["findings"] == ["spf_fail", "dmarc_reject"]
    passing = floodgate(config, "scan", str(eml), "--client", "127.0.0.1",
                        "--from", "s@pass.sender.test", "--format", "json").stdout
    assert json.loads(passing)["auth"]["spf"]["result"] == "pass"


def test_a_reload_switches_dmarc_reject(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                        dns: NameServer) -> None:
    """[auth] is applied by SIGHUP: dmarc_reject from "reject" to "none" for new messages."""
    from tests.test_reload import edit, hup

    relay = auth_relay(start_relay, sqlite_url, dns.nameserver, 'dmarc_reject = "reject"')
    sender = "s@fail.sender.test"
    assert send(relay, sender, ["alice@example.org"], message(sender))[0] == 550
    edit(relay.config, 'dmarc_reject = "reject"', 'dmarc_reject = "none"')
    hup(relay)
    assert send(relay, sender, ["alice@example.org"], message(sender))[0] == 250


def test_dkim_alignment_passes_dmarc_when_spf_fails(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                    dns: NameServer, keys: Keys) -> None:
    """rsa-sha256 and ed25519-sha256 signatures of the From domain pass DMARC with SPF
    failing; the same signature with l= does not align, so p=reject refuses it."""
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver)
    sender = f"s@{SIGNED}"
    for key, selector in ((keys.rsa, "rsa"), (keys.ed25519, "ed")):
        code, _ = send(relay, sender, ["alice@example.org"],
                       signed(key, selector, message(sender)))
        assert code == 250, selector
        ar = ar_of(last_spooled(relay))
        assert "spf=fail" in ar, ar
        assert (f"dkim=pass header.d={SIGNED} header.s={selector} "
                f"header.a={key.algorithm.decode()}") in ar, ar
        assert f"dmarc=pass (aligned dkim) header.from={SIGNED}" in ar, ar
    code, text = send(relay, sender, ["alice@example.org"],
                      signed(keys.rsa, "rsa", message(sender), length=True))
    assert (code, unref(text)) == (550, f"5.7.1 DMARC policy of {SIGNED} rejects this message")
    refused = events(sqlite_url, lambda e: e.reason == "dmarc_reject" and e.action == "reject")
    assert f"dkim=pass:{SIGNED}" in refused[0].detail and "spf=fail" in refused[0].detail


def test_a_trusted_arc_sealer_overrides_a_dmarc_failure(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                        dns: NameServer, keys: Keys) -> None:
    """A list in trusted_arc_sealers vouches for a message DMARC fails (p=reject): accepted,
    recorded as overridden; the same chain sealed by an untrusted list is refused."""
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver,
                       f'trusted_arc_sealers = ["{TRUSTED}"]')
    sender = "s@fail.sender.test"
    code, _ = send(relay, sender, ["alice@example.org"],
                   sealed(message(sender), keys.rsa, TRUSTED))
    assert code == 250
    ar = ar_of(last_spooled(relay))
    assert f"overridden by trusted ARC sealer {TRUSTED}" in ar and "dmarc=fail" in ar, ar
    assert "arc=pass" in ar, ar
    assert b"X-Floodgate-DMARC" not in last_spooled(relay)
    found = events(sqlite_url, lambda e: e.reason == "dmarc_reject")
    assert found[0].action == "accept"
    assert f"arc_override={TRUSTED}" in found[0].detail and "action=none" in found[0].detail
    code, text = send(relay, sender, ["alice@example.org"],
                      sealed(message(sender), keys.rsa, ROGUE))
    assert (code, unref(text)) == (
        550, "5.7.1 DMARC policy of fail.sender.test rejects this message")
    refused = events(sqlite_url, lambda e: e.reason == "dmarc_reject" and e.action == "reject")
    assert "arc=pass" in refused[0].detail and "arc_override" not in refused[0].detail


def test_scan_prints_dkim_and_arc_results(tmp_path: Path, sqlite_url: str,
                                          dns: NameServer, keys: Keys) -> None:
    config = write_config(tmp_path / "scan.toml", store_url=sqlite_url, port=free_port(),
                          extra=f'[auth]\nnameserver = "{dns.nameserver}"\n'
                                f'trusted_arc_sealers = ["{TRUSTED}"]\n')
    eml = tmp_path / "m.eml"
    sender = f"s@{SIGNED}"
    eml.write_bytes(signed(keys.ed25519, "ed", message(sender)).replace(b"\r\n", b"\n"))
    args = ["scan", str(eml), "--client", "127.0.0.1", "--from", sender]
    run = floodgate(config, *args)
    assert f"dkim=pass header.d={SIGNED} header.s=ed header.a=ed25519-sha256" in run.stdout
    found = json.loads(floodgate(config, *args, "--format", "json").stdout)["auth"]
    assert [(d["result"], d["domain"]) for d in found["dkim"]] == [("pass", SIGNED)]
    assert found["dmarc"]["result"] == "pass" and found["action"] == "none"
    eml.write_bytes(sealed(message("s@fail.sender.test"), keys.rsa, TRUSTED)
                    .replace(b"\r\n", b"\n"))
    run = floodgate(config, "scan", str(eml), "--client", "127.0.0.1",
                    "--from", "s@fail.sender.test")
    text = " ".join(run.stdout.split())
    assert f"ARC pass {TRUSTED} overrides the DMARC failure ({TRUSTED} is trusted)" in text, \
        run.stdout
    assert "arc=pass" in run.stdout


def test_observe_mode_records_a_dmarc_refusal_and_tags(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                       dns: NameServer) -> None:
    """[policy] observe for example.org: a DMARC p=reject failure to it is recorded as
    would-have-refused (action observe, 550) and accepted, tagged; example.net enforces, and
    a message to both is refused."""
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver,
                       '[policy.domains]\n"example.org" = "observe"\n')
    sender = "s@fail.sender.test"
    spooled_text = send_and_read(relay, sender)
    assert "dmarc=fail" in ar_of(spooled_text)
    assert b"X-Floodgate-DMARC: fail policy=reject" in spooled_text
    found = events(sqlite_url, lambda e: e.reason == "dmarc_reject")
    assert [(e.action, e.code) for e in found] == [("observe", 550)]
    assert "observe mode" in found[0].detail
    for rcpts in (["bob@example.net"], ["alice@example.org", "bob@example.net"]):
        assert send(relay, sender, rcpts, message(sender))[0] == 550, rcpts
    events(sqlite_url, lambda e: e.reason == "dmarc_reject" and e.action == "reject",
           at_least=2)


def test_observe_mode_everywhere_accepts_dmarc_failures(start_relay, sqlite_url: str,  # type: ignore[no-untyped-def]
                                                       dns: NameServer) -> None:
    relay = auth_relay(start_relay, sqlite_url, dns.nameserver,
                       '[policy]\nmode = "observe"\n')
    sender = "s@fail.sender.test"
    code, _ = send(relay, sender, ["alice@example.org", "bob@example.net"], message(sender))
    assert code == 250
    assert b"X-Floodgate-DMARC: fail policy=reject" in last_spooled(relay)
    found = events(sqlite_url, lambda e: e.reason == "dmarc_reject")
    assert [e.action for e in found] == ["observe"]


def test_scan_says_observe_mode_only_records_the_dmarc_refusal(tmp_path: Path, sqlite_url: str,
                                                              dns: NameServer) -> None:
    config = write_config(tmp_path / "scan.toml", store_url=sqlite_url, port=free_port(),
                          extra=f'[auth]\nnameserver = "{dns.nameserver}"\n'
                                '[policy.domains]\n"example.org" = "observe"\n')
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("s@fail.sender.test"))
    args = ["scan", str(eml), "--client", "127.0.0.1", "--from", "s@fail.sender.test"]
    run = floodgate(config, *args, "--rcpt", "alice@example.org")
    assert "Relay accepted and tagged: observe mode ([policy]) only records the refusal " \
           "(550 5.7.1)" in " ".join(run.stdout.split()), run.stdout
    found = json.loads(floodgate(config, *args, "--rcpt", "alice@example.org",
                                 "--format", "json").stdout)["auth"]
    assert found["action"] == "observe"
    refused = floodgate(config, *args, "--rcpt", "bob@example.net", check=False)
    assert refused.returncode == 1 and "refused in session (550 5.7.1)" in refused.stdout
