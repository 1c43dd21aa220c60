"""`floodgate blocklist export|apply|watch`: blocks from the store into files and the kernel.

`serve` runs unprivileged; `watch --apply` is the one piece that changes the firewall (root,
or user floodgate with CAP_NET_ADMIN: scripts/systemd/floodgate-blocklist.service).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from sqlalchemy import Engine

from blocklist import active
from blocklist.active import settings, snapshot
from blocklist.apply import ApplyError
from blocklist.apply import apply as apply_rules
from blocklist.export import FORMATS, Rendered, render
from relay.cli.common import fail, load, open_store
from relay.config import Config
from relay.store.database import describe

log = logging.getLogger("floodgate.blocklist")


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_rendered(rendered: Rendered, path: Path) -> list[Path]:
    """The main part to `path`, extra parts (rules per family) to `path.v4` / `path.v6`."""
    written = []
    for name, data in rendered.parts.items():
        target = path.with_name(f"{path.name}.{name}") if name else path
        write_atomic(target, data)
        written.append(target)
    return written


def _report_skipped(rendered: Rendered) -> None:
    for network, why in rendered.skipped:
        log.info("not exported %s: %s", network, why)


@click.group(short_help="Firewall export of the active blocks.")
def blocklist() -> None:
    """Firewall export of the active blocks (nftables, ipset, iptables, plain, json)."""


@blocklist.command()
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format [default: firewall.format].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write atomically to FILE (extra rule files as FILE.v4 / FILE.v6); "
              "default standard output.")
@click.pass_context
def export(ctx: click.Context, fmt: str | None, output: Path | None) -> None:
    """Render the active blocks; allowlisted and protected networks never appear."""
    config = load(ctx)
    now = datetime.now(UTC)
    engine = open_store(config)
    try:
        entries, protect = snapshot(config, engine, now)
    except Exception as e:
        fail(f"cannot read the blocks: {describe(e)}")
    rendered = render(fmt or config.firewall.format, entries, protect, settings(config, now))
    _report_skipped(rendered)
    if output is None:
        sys.stdout.buffer.write(rendered.joined())
        sys.stdout.flush()
        return
    try:
        files = write_rendered(rendered, output)
    except OSError as e:
        fail(f"{output}: {e.strerror}")
    click.echo(f"{rendered.count} networks -> {', '.join(map(str, files))}", err=True)


def _apply_once(config: Config, engine: Engine, fmt: str) -> Rendered:
    now = datetime.now(UTC)
    entries, protect = snapshot(config, engine, now)
    return apply_rules(fmt, entries, protect, settings(config, now))


@blocklist.command()
@click.option("--format", "fmt", type=click.Choice(["nft", "ipset", "iptables"]), default=None,
              help="Firewall to load [default: firewall.format].")
@click.pass_context
def apply(ctx: click.Context, fmt: str | None) -> None:
    """Load the active blocks into the kernel (needs root or CAP_NET_ADMIN); idempotent."""
    config = load(ctx)
    fmt = fmt or config.firewall.format
    engine = open_store(config)
    started = time.monotonic()
    try:
        rendered = _apply_once(config, engine, fmt)
    except ApplyError as e:
        fail(str(e))
    except Exception as e:
        fail(f"cannot read the blocks: {describe(e)}")
    _report_skipped(rendered)
    click.echo(f"applied {rendered.count} networks ({fmt}) in "
               f"{time.monotonic() - started:.2f}s")


@blocklist.command()
@click.option("--interval", type=float, default=None,
              help="Seconds between looks at the store [default: firewall.interval].")
@click.option("--apply", "do_apply", is_flag=True,
              help="Also load the kernel (root or CAP_NET_ADMIN).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Format of the file and of --apply [default: firewall.format].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep FILE up to date [default: firewall.output].")
@click.pass_context
def watch(ctx: click.Context, interval: float | None, do_apply: bool, fmt: str | None,
          output: Path | None) -> None:
    """Keep the file and the kernel in step with the store until stopped.

    Work is done only when the blocks, their expiries or the allowlist changed, or every
    firewall.reapply seconds (which restores rules someone flushed by hand).
    """
    config = load(ctx)
    fw = config.firewall
    fmt = fmt or fw.format
    output = output or fw.output
    interval = interval or fw.interval
    if do_apply and fmt not in ("nft", "ipset", "iptables"):
        fail(f"--apply needs --format nft, ipset or iptables, not {fmt}")
    if not do_apply and output is None:
        fail("nothing to do: give --apply and/or -o FILE (or set firewall.output)")
    engine = open_store(config)
    last, last_time = "", -fw.reapply
    log.info("watching the blocklist every %.1fs (%s%s%s)", interval, fmt,
             ", apply" if do_apply else "", f", file {output}" if output else "")
    while True:
        started = time.monotonic()
        try:
            now = datetime.now(UTC)
            entries, protect = snapshot(config, engine, now)
            mark = active.fingerprint(entries, protect)
            if mark != last or started - last_time >= fw.reapply:
                rendered = render(fmt, entries, protect, settings(config, now))
                if output is not None:
                    write_rendered(rendered, output)
                if do_apply:
                    rendered = apply_rules(fmt, entries, protect, settings(config, now))
                log.info("blocklist updated: %d networks (%.2fs)", rendered.count,
                         time.monotonic() - started)
                last, last_time = mark, started
        except ApplyError as e:
            log.error("apply failed: %s", e)
        except Exception as e:
            log.error("blocklist update failed, will retry: %s", describe(e))
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
