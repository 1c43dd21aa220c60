"""Operator commands for hosts: `block`, `allow` and `hosts show`."""

from __future__ import annotations

import ipaddress
import sys
from datetime import UTC, datetime, timedelta

import click
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from blocklist import blocks
from blocklist.hosts import host_key
from blocklist.scoring import Protection, score_hosts
from relay.cli import common as cli
from relay.config import Config
from relay.config.types import parse_duration
from relay.store.tables import Event


def _network(value: str) -> str:
    try:
        return blocks.canonical_network(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address or network") from None


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _protection(config: Config, engine) -> Protection:  # type: ignore[no-untyped-def]
    own = [h for h, _ in config.relay.endpoints()]
    base = Protection.build(config.blocklist.allow, own, config.blocklist.protect_loopback)
    return base.with_allow(n for n, _, _ in blocks.allow_list(engine))


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
    engine = cli.open_store(config)
    why = _protection(config, engine).why(net)
    if why:
        cli.fail(f"{net} is never blocked: {why}")
    state = blocks.add_manual(engine, net, seconds, reason)
    click.echo(f"blocked {state.network} until {_when(state.expires)} UTC ({reason})")


@block.command("remove")
@click.argument("network")
@click.pass_context
def block_remove(ctx: click.Context, network: str) -> None:
    """Lift the block on NETWORK now (offences before now do not count again)."""
    net = _network(network)
    if not blocks.remove(cli.open_store(cli.load(ctx)), net):
        cli.fail(f"{net} is not blocked")
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
    added = blocks.allow_add(cli.open_store(cli.load(ctx)), net, reason)
    click.echo(f"allowed {net}" if added else f"{net} was already allowed")


@allow.command("remove")
@click.argument("network")
@click.pass_context
def allow_remove(ctx: click.Context, network: str) -> None:
    net = _network(network)
    if not blocks.allow_remove(cli.open_store(cli.load(ctx)), net):
        cli.fail(f"{net} is not in the allowlist")
    click.echo(f"removed {net}")


@allow.command("list")
@click.pass_context
def allow_list(ctx: click.Context) -> None:
    """The allowlist: the store's entries and those from the configuration."""
    config = cli.load(ctx)
    for net in config.blocklist.allow:
        click.echo(f"{net}\t(configuration)")
    for net, reason, _ in blocks.allow_list(cli.open_store(config)):
        click.echo(f"{net}\t{reason}" if reason else net)


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
    engine = cli.open_store(config)
    key = host_key(address, config.store.ipv6_prefix)
    now = datetime.now(UTC)
    weights = config.scoring.all_weights()
    since = now - timedelta(seconds=config.scoring.window)
    rows = blocks.host_events(engine, key, since)
    score = score_hosts(rows, weights, config.scoring.bonus_floor).get(key)
    out = cli.out
    out.print(f"[bold]{address}[/] (counted as {key})", highlight=False)
    window = f"{config.scoring.window / 3600:g}h"
    out.print(f"score over the last {window}: {score.score if score else 0:g} "
              f"(threshold {config.scoring.threshold:g})", highlight=False)
    table = Table("reason", "weight", "events", "first (UTC)", "last (UTC)")
    for r in sorted(rows, key=lambda r: -r.count):
        table.add_row(r.reason, f"{weights.get(r.reason, 0):g}", str(r.count), _when(r.first),
                      _when(r.last))
    out.print(table)
    with engine.connect() as conn:
        recent = conn.execute(select(Event.ts, Event.stage, Event.action, Event.reason,
                                     Event.count, Event.recipient, Event.detail)
                              .where(Event.host == key)
                              .order_by(Event.ts.desc()).limit(shown)).all()
    if recent:
        ev = Table("time (UTC)", "stage", "action", "reason", "events", "recipient", "detail",
                   title=f"last {len(recent)} event rows (a flood folds a minute of one "
                         "reason into one row; its recipient is a sample)")
        for ts, stage, action, reason, n, rcpt, detail in recent:
            # client-chosen text: never rich markup (a stray "[/]" would crash the report)
            ev.add_row(_when(blocks.utc(ts)), stage, action, reason, str(n), escape(rcpt),
                       escape(detail))
        out.print(ev)
    existing = blocks.load_blocks(engine).get(key)
    why = _protection(config, engine).why(key)
    if why:
        out.print(f"never blocked: {why}", highlight=False)
    elif existing is not None and existing.expires > now:
        out.print(f"BLOCKED until {_when(existing.expires)} UTC, level {existing.level}, "
                  f"{existing.source}: {existing.reason}", highlight=False)
    elif existing is not None:
        out.print(f"not blocked: the last block (level {existing.level}) ended "
                  f"{_when(existing.expires)} UTC; offences before it do not count again",
                  highlight=False)
    elif score is not None and score.score >= config.scoring.threshold:
        out.print("not blocked yet: at the threshold, the next scoring run blocks it",
                  highlight=False)
    else:
        out.print("not blocked: score below the threshold", highlight=False)
    dnsbl_report(config, address)
    sys.stdout.flush()


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
