"""`floodgate sender block|allow add|remove|list`: the sender lists (Postfix's
check_sender_access and check_helo_access, rspamd's multimap), audited like host changes."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from blocklist import operations as ops
from blocklist import senders
from relay.cli import common as cli
from relay.cli.hosts import actor

HELO = click.option("--helo", is_flag=True,
                    help="Match the client's HELO name instead of the sender.")


def _pattern(value: str, helo: bool) -> str:
    try:
        return senders.pattern(value, "helo" if helo else "sender")
    except senders.BadPattern as e:
        raise click.BadParameter(str(e)) from None


@click.group(short_help="Senders, sender domains and HELO names allowed or refused.")
def sender() -> None:
    """Senders, sender domains and HELO names allowed or refused.

    An entry is an address (user@domain), a domain (it and its subdomains), `<>` (the null
    sender), or with --helo a HELO name. A `sender` entry is matched against the envelope
    sender at MAIL FROM and the From header's domain at the end of DATA. Allow outranks
    block; an allowlisted client outranks both.
    """


def _commands(list_: str) -> click.Group:
    verb = "Refuse" if list_ == "block" else "Allow"

    @click.group(name=list_, help=f"The sender {list_} list.")
    def group() -> None:
        pass

    @group.command("add", help=f"{verb} mail from ENTRY (an address, domain or `<>`).")
    @click.argument("entry")
    @HELO
    @click.option("--reason", default="", help="Why, for the audit trail and the list.")
    @click.pass_context
    def add(ctx: click.Context, entry: str, helo: bool, reason: str) -> None:
        pattern = _pattern(entry, helo)
        field = "helo" if helo else "sender"
        added = senders.add(cli.open_store(cli.load(ctx)), list_, pattern, reason,
                            actor=actor(), field=field)
        click.echo(f"{list_}: {field} {pattern}" if added
                   else f"{field} {pattern} was already on the {list_} list")

    @group.command("remove", help=f"Take ENTRY off the {list_} list.")
    @click.argument("entry")
    @HELO
    @click.pass_context
    def remove(ctx: click.Context, entry: str, helo: bool) -> None:
        pattern = _pattern(entry, helo)
        try:
            senders.remove(cli.open_store(cli.load(ctx)), list_, pattern, actor=actor(),
                           field="helo" if helo else "sender")
        except ops.NotFound as e:
            cli.fail(str(e))
        click.echo(f"removed {pattern} from the {list_} list")

    @group.command("list", help=f"The {list_} list.")
    @click.option("--format", "fmt", type=click.Choice(["table", "plain"]), default="table",
                  show_default=True)
    @click.pass_context
    def show(ctx: click.Context, fmt: str) -> None:
        rules = [r for r in senders.rules(cli.open_store(cli.load(ctx))) if r.list == list_]
        if fmt == "plain":
            for r in rules:
                click.echo(f"{r.field} {r.pattern}")
            return
        table = Table("field", "entry", "added (UTC)", "reason",
                      title=f"{len(rules)} entries on the sender {list_} list")
        for r in rules:
            table.add_row(r.field, escape(r.pattern),
                          r.created_at.strftime("%Y-%m-%d %H:%M:%S"), escape(r.reason))
        cli.out.print(table)

    return group


for _list in senders.LISTS:
    sender.add_command(_commands(_list))
