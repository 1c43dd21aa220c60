"""The `floodgate` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from relay import logs
from relay.cli.common import err, fail, load, open_store, out
from relay.config import config_path
from relay.store import aliases as alias_table
from relay.store.database import StoreError, current_revision, describe, head_revision, make_engine
from relay.store.database import upgrade as upgrade_schema


class LazyGroup(click.Group):
    """Command groups living in other modules are imported only when used: every command
    would otherwise pay for importing all of them (over a second on this machine)."""

    lazy: ClassVar[dict[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from relay.cli.version import version_line

    click.echo(version_line())
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the versions of Floodgate, aiosmtpd and "
              "Python, and exit.")
@click.option("-c", "--config", "config", metavar="FILE",
              help="Configuration file [env FLOODGATE_CONFIG; default ./floodgate.toml].")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", default="auto", show_default=True, envvar="FLOODGATE_LOG_FORMAT",
              type=click.Choice(logs.FORMATS),
              help="plain: UTC timestamp on each line; journal: <N> priority prefix for "
              "journald/syslog; auto: journal when stderr is systemd's journal stream "
              "[env FLOODGATE_LOG_FORMAT].")
@click.pass_context
def main(ctx: click.Context, config: str | None, log_level: str, log_format: str) -> None:
    """Floodgate: the inbound relay that keeps floods off your mail servers."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    logs.setup(log_level.upper(), log_format)


@main.command("check-config", short_help="Validate the configuration.")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration: prints "ok", or each problem with its key."""
    load(ctx)
    click.echo("ok")


@main.command(short_help="Run the relay until SIGTERM; SIGHUP reloads.")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Relay processes sharing the listening sockets (SO_REUSEPORT); "
              "worker 0 runs delivery.")
@click.pass_context
def serve(ctx: click.Context, workers: int) -> None:
    """Run the relay until SIGTERM; SIGHUP reloads (README "Reloading")."""
    from relay.service.server import StartupError
    from relay.service.server import serve as run_server

    config = load(ctx)
    path = config_path(ctx.obj["config"])  # read again on SIGHUP
    try:
        if workers > 1:
            from relay.service.workers import serve_workers

            serve_workers(config, workers, path)
        else:
            run_server(config, path=path)
    except StartupError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the schema to this version of Floodgate."""
    engine = make_engine(load(ctx).store.url)
    try:
        before, after = upgrade_schema(engine)
    except StoreError as e:
        fail(str(e))
    click.echo(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Show the schema revision of the store and the one this version needs."""
    engine = make_engine(load(ctx).store.url)
    try:
        current = current_revision(engine)
    except Exception as e:
        fail(f"cannot open the store: {describe(e)}")
    click.echo(f"store: {current or 'empty'}  needed: {head_revision()}")


@main.group()
def aliases() -> None:
    """The table of valid recipient addresses."""


def _report(result: alias_table.ImportResult, verb: str = "added") -> None:
    for problem in result.rejected[:200]:
        err.print(f"line {problem.line}: {problem.message}: {problem.text!r}", highlight=False,
                  markup=False)
    if len(result.rejected) > 200:
        err.print(f"... and {len(result.rejected) - 200} more rejected lines", markup=False)
    parts = [f"{verb} {result.added}", f"skipped {result.skipped} (already present)",
             f"rejected {len(result.rejected)}"]
    if result.removed:
        parts.insert(0, f"removed {result.removed}")
    click.echo(", ".join(parts))


@aliases.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(["postfix", "list", "csv"]), default="list",
              show_default=True, help="postfix: virtual map lines `address target`; list: one "
              "address per line; csv: address[,target].")
@click.option("--replace", is_flag=True, help="Replace the whole table with this file.")
@click.option("--trap", is_flag=True, help="These are spam traps: refused like unknown "
              "addresses, and a host that tries one scores the `trap` weight.")
@click.pass_context
def aliases_import(ctx: click.Context, file: str, fmt: str, replace: bool, trap: bool) -> None:
    """Import addresses from FILE (`-` for standard input)."""
    config = load(ctx)
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        text = alias_table.read_text(data)
    except OSError as e:
        fail(f"{file}: {e.strerror}")
    except UnicodeDecodeError as e:
        fail(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})")
    total = text.getvalue().count("\n") + 1
    hosted = config.hosted()
    engine = open_store(config)
    progress = Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True,
                        disable=not err.is_terminal)
    try:
        with progress:
            task = progress.add_task("import", total=total)
            entries = alias_table.parse(text, fmt)  # type: ignore[arg-type]

            def counted():  # type: ignore[no-untyped-def]
                for item in entries:
                    progress.update(task, completed=item.line)
                    yield item

            result = alias_table.import_entries(engine, counted(), hosted.__contains__,
                                                replace=replace, trap=trap)
    except Exception as e:
        fail(f"import failed, nothing was changed: {describe(e)}")
    _report(result)
    if replace and result.rejected:
        err.print("note: --replace kept the valid lines only", markup=False)


@aliases.command("add")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--trap", is_flag=True, help="Add them as spam traps.")
@click.pass_context
def aliases_add(ctx: click.Context, addresses: tuple[str, ...], trap: bool) -> None:
    """Add one or more addresses (user@domain, or @domain for a catch-all)."""
    config = load(ctx)
    result = alias_table.add(open_store(config), list(addresses), config.hosted().__contains__,
                             trap=trap)
    _report(result)
    if result.rejected:
        sys.exit(1)


@aliases.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@click.pass_context
def aliases_remove(ctx: click.Context, addresses: tuple[str, ...]) -> None:
    """Remove addresses."""
    removed, missing = alias_table.remove(open_store(load(ctx)), list(addresses))
    for m in missing:
        err.print(f"not in the table: {m}", markup=False, highlight=False)
    click.echo(f"removed {removed}")
    if missing:
        sys.exit(1)


@aliases.command("list")
@click.option("--domain", help="Only this domain.")
@click.pass_context
def aliases_list(ctx: click.Context, domain: str | None) -> None:
    """Print addresses, one per line (with the target where there is one)."""
    for address, target in alias_table.listing(open_store(load(ctx)), domain):
        click.echo(f"{address}\t{target}" if target else address)


@aliases.command("count")
@click.pass_context
def aliases_count(ctx: click.Context) -> None:
    """Addresses per domain."""
    counts = alias_table.count(open_store(load(ctx)))
    table = Table("domain", "addresses")
    for domain, n in counts.items():
        table.add_row(domain, str(n))
    table.add_row("[bold]total", f"[bold]{sum(counts.values())}")
    out.print(table)


@main.command(short_help="Accept and file all mail: a stand-in next hop.")
@click.option("--listen", default="127.0.0.1:2600", show_default=True, help="host:port")
@click.option("--dir", "directory", default="var/sink", show_default=True,
              type=click.Path(file_okay=False), help="Where received messages are filed.")
def sink(listen: str, directory: str) -> None:
    """Accept all mail and file it: a stand-in next hop for trying Floodgate out."""
    import asyncio

    from relay.config.types import parse_endpoint
    from relay.service.sink import run_sink

    try:
        host, port = parse_endpoint(listen)
    except ValueError as e:
        fail(f"--listen: {e}")
    try:
        asyncio.run(run_sink(host, port, Path(directory)))
    except OSError as e:
        fail(f"cannot listen on {listen}: {e.strerror or e}")


def _register() -> None:
    """Subcommands from other modules, as "module:attribute", loaded on first use."""
    LazyGroup.lazy.update({
        "block": "relay.cli.hosts:block",
        "allow": "relay.cli.hosts:allow",
        "sender": "relay.cli.senders:sender",
        "hosts": "relay.cli.hosts:hosts",
        "report": "relay.cli.report:report",
        "replay": "relay.cli.replay:replay",
        "blocklist": "relay.cli.blocklist:blocklist",
        "queue": "relay.cli.queue:queue",
        "trace": "relay.cli.trace:trace",
        "scan": "relay.cli.scan:scan",
        "web": "relay.cli.web:web",
        "token": "relay.cli.web:token",
        "policy": "relay.cli.adopt:policy",
        "milter": "relay.cli.adopt:milter",
    })


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
