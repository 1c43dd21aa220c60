"""`floodgate scan FILE.eml...`: the content filters on stored messages, and with `--client IP
--helo NAME --from ADDR` their authentication results as the relay would have found them,
without a relay: the same checks
(relay/auth/), the `[auth]` section's name server and timeout, the relay's hostname as
authserv-id. For "why was this refused / tagged?" and for trying a sender's DNS changes."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
import sys
from pathlib import Path

import click
from rich.markup import escape

from relay.auth.authenticator import Authenticator
from relay.auth.check import Action, AuthReport
from relay.auth.header import NAME
from relay.cli import common as cli
from relay.config import Config
from relay.smtp.observe import Observe

_BARE_LF = re.compile(rb"(?<!\r)\n")


def _as_received(raw: bytes) -> bytes:
    """A file saved with LF line endings, as SMTP would have carried it (CRLF): signatures
    are computed over the CRLF form."""
    return _BARE_LF.sub(b"\r\n", raw)


def _summary(report: AuthReport, action: str) -> list[str]:
    spf = report.spf
    lines = [f"SPF    {spf.result:<9} {spf.identity} {spf.domain or '-'}"
             + (f"  ({spf.reason})" if spf.reason else "")]
    for d in report.dkim or ():
        lines.append(f"DKIM   {d.result:<9} d={d.domain} s={d.selector}"
                     + (" l= (body length limited)" if d.body_length_limited else "")
                     + (f"  ({d.reason})" if d.reason else ""))
    if not report.dkim:
        lines.append("DKIM   none      no signature")
    dmarc = report.dmarc
    lines.append(f"DMARC  {dmarc.result:<9} from {dmarc.from_domain or '-'}"
                 + (f"  ({dmarc.reason})" if dmarc.reason else ""))
    arc = report.arc
    lines.append(f"ARC    {arc.result:<9} " + (", ".join(arc.sealers) or "-")
                 + (f"  overrides the DMARC failure ({report.arc_override} is trusted)"
                    if report.arc_override else ""))
    outcome = {"reject": "refused in session (550 5.7.1)",
               "observe": "accepted and tagged: observe mode ([policy]) only records the "
                          "refusal (550 5.7.1)",
               "tag": "accepted and tagged", "none": "accepted"}[action]
    lines.append(f"Relay  {outcome}" + (f"; events: {', '.join(report.findings())}"
                                        if report.findings() else ""))
    return lines


def _authenticate(config: Config, message: bytes, client: str, helo: str, sender: str,
                  rcpts: list[str]) -> tuple[AuthReport, str, str]:
    """The report, what the relay would do ("observe": a refusal observe mode only records,
    as RelayHandler decides it) and the Authentication-Results value."""
    auth = Authenticator(config.auth, config.relay.hostname)
    report = asyncio.run(auth.check(_as_received(message), client, helo, sender))
    action: str = auth.action(report, rcpts)
    if action == "reject":
        observed = config.observed()
        observe = Observe(observed, everywhere=observed == frozenset(config.hosted()))
        enforcing = [r for r in rcpts if not observe.of(r)]
        if rcpts:  # no recipient of an enforcing domain would have it refused
            observing = not enforcing or auth.action(report, enforcing) != "reject"
        else:
            observing = config.policy.mode == "observe"
        action = "observe" if observing else action
    shown: Action = "tag" if action == "observe" else action  # type: ignore[assignment]
    return report, action, auth.headers(report, shown)[0][1]


def _auth_json(report: AuthReport, action: str, header: str) -> dict[str, object]:
    return {
        "authentication_results": header,
        "action": action,
        "findings": [str(r) for r in report.findings()],
        "spf": dataclasses.asdict(report.spf),
        "dkim": [dataclasses.asdict(d) for d in report.dkim],
        "arc": dataclasses.asdict(report.arc),
        "dmarc": dataclasses.asdict(report.dmarc),
        "arc_override": report.arc_override,
    }


@click.command("scan", short_help="Run the content filters and authentication offline.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--rcpt", "rcpts", multiple=True, help="Recipient (for per-domain thresholds "
              "and dmarc_reject).")
@click.option("--client", metavar="IP", help="The client address the message came from: "
              "also check SPF, DKIM, DMARC and ARC ([auth] nameserver and timeout).")
@click.option("--helo", default="", metavar="NAME", help="The client's HELO name.")
@click.option("--from", "sender", default="", metavar="ADDR",
              help="The envelope sender (MAIL FROM); empty: the null sender.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object per file, on one line.")
@click.pass_context
def scan(ctx: click.Context, files: tuple[str, ...], rcpts: tuple[str, ...], client: str | None,
         helo: str, sender: str, fmt: str) -> None:
    """Run the content filters on FILE.eml offline and print each scanner's verdict; with
    --client, also the Authentication-Results header the relay would add and a summary.

    Exit status: 0 all clean, 1 something would be refused or tempfailed.
    """
    from relay.service.scanners import build_scanners, scan_message

    config = cli.load(ctx)
    filters = build_scanners(config.clamav, config.spamassassin)
    if client is not None:
        try:
            ipaddress.ip_address(client)
        except ValueError:
            cli.fail(f"--client: {client!r} is not an IP address")
    elif not filters:
        cli.fail("no scanner configured: add a [clamav] or [spamassassin] section, "
                 "or give --client to check authentication")
    refused = False
    for name in files:
        try:
            content = Path(name).read_bytes()
        except OSError as e:
            cli.fail(f"{name}: {e.strerror}")
        found: dict[str, object] = {"file": name}
        scanners = []
        results = asyncio.run(scan_message(filters, content, list(rcpts))) if filters else []
        for scanner, verdict in results:
            if verdict is None:
                scanners.append({"scanner": scanner, "action": "clean"})
                if fmt == "text":
                    click.echo(f"{name}: {scanner}: clean")
                continue
            extra = " ".join(f"{h}: {v};" for h, v in verdict.headers)
            scanners.append({"scanner": scanner, "action": verdict.action.value,
                             "reply": verdict.reply})
            if fmt == "text":
                click.echo(f"{name}: {scanner}: {verdict.action.value} {verdict.reply}"
                           + (f" [{extra}]" if extra else ""))
            refused |= verdict.action.value != "accept"
        found["scanners"] = scanners
        if client is not None:
            report, action, header = _authenticate(config, content, client, helo, sender,
                                                   list(rcpts))
            refused |= action == "reject"
            found["auth"] = _auth_json(report, action, header)
            if fmt == "text":
                cli.out.print(escape(f"{NAME}: {header}"), highlight=False)
                for line in _summary(report, action):
                    cli.out.print(escape(line), highlight=False)
        if fmt == "json":
            click.echo(json.dumps(found))
    sys.exit(1 if refused else 0)
