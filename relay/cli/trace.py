"""`floodgate trace REF` / `floodgate trace --from --to --client --message-id`: the whole
story of a session and its messages, as relay/events/trace.py reads it from the events."""

from __future__ import annotations

import dataclasses
import json

import click
from rich.markup import escape

from blocklist.hosts import host_key
from relay.cli import common as cli
from relay.config.types import parse_duration
from relay.events import trace as tr


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _line(step: tr.Step) -> str:
    """One event: time, stage, outcome and code, then what it was about."""
    what = [f"<{step.recipient}>" if step.recipient and step.stage == "rcpt" else
            (f"to={step.recipient}" if step.recipient else "")]
    if step.queue_id:
        what.append(f"queue_id={step.queue_id}")
    if step.message_id:
        what.append(f"message_id={step.message_id}")
    if step.size is not None:
        what.append(f"size={step.size}")
    if step.detail:
        what.append(step.detail)
    if step.count > 1:
        also = (f"; also of sessions {' '.join(step.folded)}"
                f"{' and more not named' if step.folded_more else ''}" if step.folded else "")
        what.append(f"(x{step.count}, folded in a flood{also})")
    return (f"  {step.ts.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}  {step.stage:<8} "
            f"{step.action:<8} {step.reason:<16} {step.code or '':>3}  "
            + " ".join(w for w in what if w))


@click.command("trace", short_help="A session's or message's whole story, from the events.")
@click.argument("ref", required=False)
@click.option("--from", "sender", metavar="ADDR", help="Envelope sender (MAIL FROM).")
@click.option("--to", "recipient", metavar="ADDR", help="A recipient (RCPT TO).")
@click.option("--client", metavar="IP", help="The client's address.")
@click.option("--message-id", "message_id", metavar="ID",
              help="The accepted message's Message-ID, with or without <>.")
@click.option("--since", callback=_duration, metavar="DURATION",
              help="Only events this recent: 30m, 24h, 7d... [default: 24h for a search, "
              "no limit for a REF]")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.pass_context
def trace(ctx: click.Context, ref: str | None, sender: str | None, recipient: str | None,
          client: str | None, message_id: str | None, since: float | None, fmt: str) -> None:
    """What happened to a session or a message, in order: connect (gate, DNSBL), each
    RCPT, the filters' verdict, the queue id, each delivery attempt with the next hop's
    reply, a bounce. REF is the `[ref ...]` of a reply, or a queue id."""
    query = tr.Query(ref=ref, sender=sender, recipient=recipient, client=client,
                     message_id=message_id,
                     since=tr.since(since if since is not None or ref else 86_400.0))
    if query.empty():
        raise click.UsageError("give a REF, or --from, --to, --client or --message-id")
    config = cli.load(ctx)
    if client:
        query = dataclasses.replace(query, host=host_key(client, config.store.ipv6_prefix))
    found = tr.find(cli.open_store(config), query)
    if fmt == "json":
        click.echo(json.dumps(tr.as_data(found), indent=2))
        return
    if not found.stories:
        cli.out.print("nothing found", markup=False)
        return
    for story in found.stories:
        head = (f"session {story.session or '-'}  client {story.client or '-'}  "
                f"helo {story.helo or '-'}  node {story.node}")
        if story.sender or story.queue_ids:
            head += f"  from <{story.sender}>"
        cli.out.print(f"[bold]{escape(head)}[/]")
        for step in story.steps:
            cli.out.print(_line(step), markup=False, highlight=False)
    if found.more:
        cli.out.print(f"... and {found.more} more sessions: narrow the search", markup=False)
