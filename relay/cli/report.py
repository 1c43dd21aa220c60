"""`floodgate report hosts|timeline|summary`: the statistics an operator in an outbreak
wants, from the store's rollups; rich tables on a terminal, CSV/JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.markup import escape
from rich.table import Table

from blocklist import blocks
from blocklist import reports as rp
from relay.cli import common as cli
from relay.config.types import parse_duration
from relay.delivery.spool import Spool
from relay.reasons import Reason

BUCKETS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5), "1h": timedelta(hours=1)}
SHORT = {"connections": "conn", "accepted": "acc", "rejected": "rej", "unknown_rcpt": "unknown",
         "relay_denied": "relay", "protocol": "proto", "tempfail": "tempf",
         "greylisted": "grey", "greylist_passed": "grey ok"}
FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]),
                      default="table", show_default=True)



def _since(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if dt else ""


def _machine_readable(fmt: str, records: Sequence[dict[str, Any]], fields: Sequence[str]) -> bool:
    """Print `records` as CSV or JSON when `fmt` asks for it; False leaves the table to
    the caller (one reading of --format for the row reports)."""
    if fmt == "csv":
        click.echo(rp.to_csv(records, fields), nl=False)
    elif fmt == "json":
        click.echo(rp.to_json(records))
    else:
        return False
    return True


def _num(n: int) -> str:
    return f"{n:,}"


def _tidy(table: Table) -> None:
    """Numbers right-aligned, nothing cut short: a wide table scrolls rather than lies."""
    table.padding = (0, 1)
    table.collapse_padding = True
    table.pad_edge = False
    for i, col in enumerate(table.columns):
        col.no_wrap = True
        col.min_width = max(len(str(c)) for c in [col.header, *col.cells])
        if i:
            col.justify = "right"


@click.group()
def report() -> None:
    """Per-host counts, timelines and charts, the day's summary."""


@report.command("hosts")
@click.option("--since", default="24h", show_default=True, help="Window: 30m, 24h, 7d...")
@click.option("--top", default=20, show_default=True, help="Rows to show (0: all).")
@click.option("--reason", type=click.Choice([r.value for r in Reason]),
              help="Only hosts with this reason, most of it first.")
@FORMAT
@click.pass_context
def hosts(ctx: click.Context, since: str, top: int, reason: str | None, fmt: str) -> None:
    """One row per host (IPv6 per scoring prefix), most refused first."""
    config = cli.load(ctx)
    seconds = _since(since)
    engine = cli.open_store(config)
    start, now = rp.since_now(seconds)
    window = config.scoring.window
    score_since = start if window == seconds else now - timedelta(seconds=window)
    rows = rp.hosts_report(engine, since=start, top=top, reason=reason,
                           weights=config.scoring.all_weights(), score_since=score_since,
                           active=blocks.active_blocks(engine, now))
    records = [h.row() for h in rows]
    if _machine_readable(fmt, records, rp.HOST_FIELDS):
        return
    # a terminal is narrow: refusal columns nobody scored are left out (CSV/JSON keep all)
    fields = ["connections", "accepted", "rejected",
              *(f for f in (*rp.REJECTS, "other", "tempfail", "observed", *rp.GREYLIST)
                 if any(r[f] for r in records))]
    blocked = any(h.blocked_until for h in rows)
    table = Table("host", *(SHORT.get(f, f) for f in fields), "score",
                  *(["blocked until"] if blocked else []),
                  title=f"hosts since {_when(start)} UTC"
                  + (f", reason {reason}" if reason else "") + f" ({len(rows)} shown)",
                  box=box.SIMPLE_HEAD)
    for h, r in zip(rows, records, strict=True):
        table.add_row(h.host, *(_num(r[f]) for f in fields), f"{h.score:g}",
                      *([_when(h.blocked_until)] if blocked else []))
    _tidy(table)
    cli.out.print(table)


@report.command("timeline")
@click.option("--since", default="48h", show_default=True)
@click.option("--bucket", type=click.Choice(list(BUCKETS)), default="5m", show_default=True)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path),
              help="Also draw a stacked chart into this PNG file (the charts extra).")
@FORMAT
@click.pass_context
def timeline(ctx: click.Context, since: str, bucket: str, png: Path | None, fmt: str) -> None:
    """Outcomes per time bucket (the table leaves out empty buckets and outcomes)."""
    if png is not None and find_spec("matplotlib") is None:  # an optional extra
        cli.fail("--png needs the charts extra: pip install 'floodgate[charts]'")
    config = cli.load(ctx)
    start, now = rp.since_now(_since(since))
    tl = rp.timeline_report(cli.open_store(config), since=start, now=now, step=BUCKETS[bucket])
    if png is not None:
        from blocklist.charts import draw_timeline

        try:
            draw_timeline(tl, png)
        except OSError as e:
            cli.fail(f"{png}: {e.strerror or e}")
    if fmt == "csv":
        click.echo(rp.to_csv(tl.rows(), ["time", *rp.OUTCOMES]), nl=False)
    elif fmt == "json":
        click.echo(rp.to_json({"start": tl.start.isoformat(), "end": tl.end.isoformat(),
                               "bucket": bucket, "buckets": tl.rows()}))
    else:
        total = tl.totals()
        shown = [o for o in rp.OUTCOMES if total[o]] or ["accepted"]
        table = Table("time (UTC)", *(SHORT.get(o, o) for o in shown),
                      title=f"outcomes per {bucket}, {_when(tl.start)} to {_when(tl.end)} UTC",
                      box=box.SIMPLE_HEAD)
        for t, counts in tl.buckets:
            if any(counts.values()):
                table.add_row(_when(t), *(_num(counts[o]) for o in shown))
        table.add_row("total", *(f"{total[o]:,}" for o in shown), style="bold")
        _tidy(table)
        cli.out.print(table)
    if png is not None:
        click.echo(f"chart written to {png}", err=True)


@report.command("auth")
@click.option("--since", default="24h", show_default=True, help="Window: 30m, 24h, 7d...")
@click.option("--top", default=20, show_default=True, help="Rows to show (0: all).")
@FORMAT
@click.pass_context
def auth(ctx: click.Context, since: str, top: int, fmt: str) -> None:
    """Mail authentication findings ([auth]) per From domain, most first; per host:
    `report hosts --reason spf_fail` (or any of them)."""
    config = cli.load(ctx)
    start, _now = rp.since_now(_since(since))
    rows = rp.auth_by_domain(cli.open_store(config), since=start, top=top)
    if _machine_readable(fmt, rows, rp.AUTH_FIELDS):
        return
    table = Table(*(f.replace("_", " ") for f in rp.AUTH_FIELDS),
                  title=f"authentication findings by From domain since {_when(start)} UTC",
                  box=box.SIMPLE_HEAD)
    for r in rows:
        table.add_row(escape(r["from_domain"]), *(_num(r[f]) for f in rp.AUTH_FIELDS[1:]))
    _tidy(table)
    cli.out.print(table)


def _queue(spool_dir: Path) -> tuple[int, int]:
    spool = Spool(spool_dir)
    queued = len(spool.ids()) if spool.queue.is_dir() else 0
    held = sum(1 for _ in spool.hold.iterdir()) if spool.hold.is_dir() else 0
    return queued, held


@report.command("summary")
@click.option("--since", default="24h", show_default=True)
@click.option("--top", default=10, show_default=True, help="Entries in each top list.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def summary(ctx: click.Context, since: str, top: int, fmt: str) -> None:
    """Totals by outcome, top viruses, refused recipients and DNSBL zones, blocks, queue."""
    config = cli.load(ctx)
    start, now = rp.since_now(_since(since))
    engine = cli.open_store(config)
    queued, held = _queue(config.relay.spool_dir)
    s = rp.summary_report(engine, since=start, now=now, limit=top,
                          active=blocks.active_blocks(engine, now), queued=queued, held=held)
    if fmt == "json":
        click.echo(rp.to_json(s.as_dict()))
        return
    out = cli.out
    out.print(f"[bold]Floodgate summary[/] {_when(start)} to {_when(now)} UTC", highlight=False)
    table = Table("outcome", "count", title=f"{s.connections:,} connections")
    for name, n in s.outcomes.items():
        table.add_row("observed (would have refused)" if name == "observed" else name, f"{n:,}")
    for name, n in s.delivery.items():
        table.add_row(f"delivery: {name}", f"{n:,}")
    for name, n in s.greylist.items():
        table.add_row(name, f"{n:,}")
    out.print(table)
    for title, entries in (("top viruses", s.viruses), ("top refused recipients", s.recipients),
                           ("top DNSBL zones", s.dnsbl_zones)):
        t = Table(title.split()[-1], "count", title=title)
        for name, n in entries:
            t.add_row(name, f"{n:,}")
        out.print(t if entries else f"{title}: none", highlight=False)
    out.print(f"hosts blocked now: {len(s.blocked)}", highlight=False)
    for b in s.blocked[:top]:
        out.print(f"  {b.network} until {_when(b.expires)} UTC ({b.reason})", highlight=False)
    out.print(f"queue: {queued} messages ({held} held)", highlight=False)
