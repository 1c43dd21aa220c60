"""Operator commands for hosts: `block`, `allow` and `hosts show`."""

from __future__ import annotations

import getpass
import ipaddress
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from blocklist import blocks
from blocklist import operations as ops
from relay.cli import common as cli
from relay.config import Config
from relay.config.types import parse_duration


def _network(value: str) -> str:
    try:
        return ops.network(value)
    except ops.BadNetwork as e:
        raise click.BadParameter(str(e)) from None


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def actor() -> str:
    """Who the audit trail names for a change made from this shell."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name, no passwd entry: a container
        return f"cli:uid {os.getuid()}"


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def block() -> None:
    """Blocked hosts and networks."""


@block.command("add")
@click.argument("network")
@click.option("--for", "duration", default="24h", show_default=True,
              help="How long: 30m, 24h, 7d...")
@click.option("--reason", default="manual", show_default=True)
@click.pass_context
def block_add(ctx: click.Context, network: str, duration: str, reason: str) -> None:
    """Block NETWORK (an address or CIDR) now."""
    config = cli.load(ctx)
    net, seconds = _network(network), _duration(duration)
    try:
        state = ops.block(config, cli.open_store(config), net, seconds, reason, actor=actor(),
                          node="cli")
    except ops.NeverBlocked as e:
        cli.fail(str(e))
    click.echo(f"blocked {state.network} until {_when(state.expires)} UTC ({reason})")


@block.command("remove")
@click.argument("network")
@click.pass_context
def block_remove(ctx: click.Context, network: str) -> None:
    """Lift the block on NETWORK now (offences before now do not count again)."""
    net = _network(network)
    try:
        ops.unblock(cli.open_store(cli.load(ctx)), net, actor=actor())
    except ops.NotFound as e:
        cli.fail(str(e))
    click.echo(f"unblocked {net}")


@block.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "plain"]), default="table",
              show_default=True)
@click.pass_context
def block_list(ctx: click.Context, fmt: str) -> None:
    """Active blocks, longest first."""
    active = blocks.active_blocks(cli.open_store(cli.load(ctx)))
    if fmt == "plain":
        for b in active:
            click.echo(b.network)
        return
    table = Table("network", "until (UTC)", "level", "source", "score", "reason",
                  title=f"{len(active)} active blocks")
    for b in active:
        table.add_row(b.network, _when(b.expires), str(b.level), b.source, f"{b.score:g}",
                      b.reason)
    cli.out.print(table)


@click.group()
def allow() -> None:
    """Networks that are never blocked."""


@allow.command("add")
@click.argument("network")
@click.option("--reason", default="")
@click.pass_context
def allow_add(ctx: click.Context, network: str, reason: str) -> None:
    """Never block NETWORK (an existing block on it stops taking effect)."""
    net = _network(network)
    added = ops.allow_add(cli.open_store(cli.load(ctx)), net, reason, actor=actor())
    click.echo(f"allowed {net}" if added else f"{net} was already allowed")


@allow.command("remove")
@click.argument("network")
@click.pass_context
def allow_remove(ctx: click.Context, network: str) -> None:
    """Take NETWORK off the store's allowlist (it can be blocked again)."""
    net = _network(network)
    try:
        ops.allow_remove(cli.open_store(cli.load(ctx)), net, actor=actor())
    except ops.NotFound as e:
        cli.fail(str(e))
    click.echo(f"removed {net}")


@allow.command("list")
@click.pass_context
def allow_list(ctx: click.Context) -> None:
    """The allowlist: the store's entries and those from the configuration."""
    config = cli.load(ctx)
    for a in ops.allow_list(config, cli.open_store(config)):
        if a.source == "config":
            click.echo(f"{a.network}\t(configuration)")
        else:
            click.echo(f"{a.network}\t{a.reason}" if a.reason else a.network)


@click.group()
def hosts() -> None:
    """What Floodgate knows about a host."""


@hosts.command("show")
@click.argument("address")
@click.option("--events", "shown", default=20, show_default=True,
              help="How many recent events to list.")
@click.pass_context
def hosts_show(ctx: click.Context, address: str, shown: int) -> None:
    """Score, the events that made it, and why ADDRESS is or is not blocked."""
    config = cli.load(ctx)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        cli.fail(f"{address!r} is not an IP address")
    view = ops.show(config, cli.open_store(config), address, shown)
    out = cli.out
    out.print(f"[bold]{address}[/] (counted as {view.host})", highlight=False)
    out.print(f"score over the last {view.window / 3600:g}h: {view.score:g} "
              f"(threshold {view.threshold:g})", highlight=False)
    table = Table("reason", "weight", "events", "first (UTC)", "last (UTC)")
    for r in view.reasons:
        table.add_row(r.reason, f"{r.weight:g}", str(r.count), _when(r.first), _when(r.last))
    out.print(table)
    if view.events:
        ev = Table("time (UTC)", "stage", "action", "reason", "events", "recipient", "detail",
                   title=f"last {len(view.events)} event rows (a flood folds a minute of one "
                         "reason into one row; its recipient is a sample)")
        for e in view.events:
            # client-chosen text: never rich markup (a stray "[/]" would crash the report)
            ev.add_row(_when(e.ts), e.stage, e.action, e.reason, str(e.count),
                       escape(e.recipient), escape(e.detail))
        out.print(ev)
    for line in auth_notes(view.events):  # From domains are the sender's text: no markup
        out.print(escape(line), highlight=False)
    # the one line an operator looks for, in capitals when the host is refused
    why = "BLOCKED" + view.why.removeprefix("blocked") if view.state == "blocked" else view.why
    out.print(why, highlight=False)
    dnsbl_report(config, address)
    sys.stdout.flush()


AUTH_MEANING = {
    "spf_fail": "SPF fail: the envelope sender's domain says this host may not send for it",
    "spf_softfail": "SPF softfail: the sender's domain says this host is probably not its",
    "dkim_fail": "DKIM fail: a signature that does not verify (altered or forged)",
    "dmarc_reject": "DMARC fail under p=reject: the From domain asks that this be refused",
    "dmarc_quarantine": "DMARC fail under p=quarantine: the From domain asks it be tagged",
}


def auth_notes(events: Sequence[Any]) -> list[str]:
    """What the mail authentication findings among `events` mean, with the From domains
    they were about (each finding's detail starts `from=DOMAIN`)."""
    domains: dict[str, set[str]] = {}
    for e in events:
        if e.reason in AUTH_MEANING:
            first = (e.detail or "").split(" ", 1)[0]
            domains.setdefault(e.reason, set()).add(first.removeprefix("from="))
    return [f"{AUTH_MEANING[r]} (From: {', '.join(sorted(d))})"
            for r, d in domains.items()]


def dnsbl_report(config: Config, address: str) -> None:
    """Ask the configured DNSBLs now (bypassing nothing: the same filter the relay runs)."""
    import asyncio

    from relay.service.scanners import build_dnsbl

    dnsbl = build_dnsbl(config.dnsbl)
    if dnsbl is None:
        click.echo("DNSBL: none configured")
        return
    result = asyncio.run(dnsbl.lookup(address))
    verdict = "refused at connect" if result.score >= dnsbl.reject_score else "not refused"
    click.echo(f"DNSBL score {result.score:g} (reject at {dnsbl.reject_score}): {verdict}")
    for listing in result.listings:
        click.echo(f"  listed in {listing.zone}: {', '.join(listing.codes)} "
                   f"(weight {listing.weight:g})")
    for zone, codes in result.ignored:
        click.echo(f"  {zone}: answered {', '.join(codes)}, not a counted code")
    for zone, error in result.errors:
        click.echo(f"  {zone}: {error}")
