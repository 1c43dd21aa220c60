"""`floodgate queue list|show|flush|delete|hold|release`: the operator's view of the spool.

Works on the spool directory, with or without a running relay; requests to the relay
(flush, release) are files it notices within a second.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import click

from relay.cli.common import fail, load
from relay.delivery import queue_admin as q
from relay.delivery.spool import Spool


def _spool(ctx: click.Context) -> Spool:
    config = load(ctx)
    spool = Spool(config.relay.spool_dir)
    if not spool.queue.is_dir():
        fail(f"no spool at {spool.root} (relay.spool_dir)")
    return spool


def _id(spool: Spool, prefix: str) -> str:
    try:
        return q.resolve(spool, prefix)
    except ValueError as e:
        fail(str(e))


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts > 0 else "-"


def _as_dict(m: q.QueuedMessage) -> dict[str, object]:
    env, state = m.envelope, m.state
    return {
        "queue_id": m.queue_id, "sender": env.mail_from, "size": env.size,
        "arrival": env.received, "held": m.held, "attempts": state.attempts,
        "next_attempt": state.next_attempt, "last_attempt": state.last_attempt,
        "recipients": {r: {"status": s.status, "attempts": s.attempts, "reply": s.reply,
                           "hop": s.hop} for r, s in state.recipients.items()},
    }


@click.group("queue")
def queue() -> None:
    """The delivery queue: what waits, for whom, and why."""


@queue.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Waiting messages, oldest first, with their pending recipients and last reply."""
    messages = q.listing(_spool(ctx))
    if as_json:
        for m in messages:
            click.echo(json.dumps(_as_dict(m)))
        return
    for m in messages:
        flag = "!" if m.held else " "
        sender = m.envelope.mail_from or "MAILER-DAEMON"
        click.echo(f"{m.queue_id}{flag} {m.envelope.size:>9}  "
                   f"{_when(m.envelope.received)}  <{sender}>")
        if m.state.attempts:
            why = m.last_reply() or "-"
            click.echo(f"    ({why}; attempts {m.state.attempts}, "
                       f"next {_when(m.state.next_attempt)})")
        for rcpt in m.pending:
            click.echo(f"        {rcpt}")
    pending = sum(len(m.pending) for m in messages)
    held = sum(m.held for m in messages)
    click.echo(f"-- {len(messages)} messages, {pending} recipients pending, {held} held"
               + (" (! = held)" if held else ""))


@queue.command("show")
@click.argument("queue_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, queue_id: str, as_json: bool) -> None:
    """One message: envelope, and every recipient's state and last reply."""
    spool = _spool(ctx)
    try:
        m = q.load(spool, _id(spool, queue_id))
    except FileNotFoundError:
        fail(f"{queue_id}: no such message")
    if as_json:
        click.echo(json.dumps(_as_dict(m)))
        return
    env = m.envelope
    for key, value in (("queue id", m.queue_id), ("sender", f"<{env.mail_from}>"),
                       ("client", f"{env.client} ({env.helo})"), ("arrival", _when(env.received)),
                       ("size", env.size), ("held", "yes" if m.held else "no"),
                       ("attempts", m.state.attempts),
                       ("next attempt", _when(m.state.next_attempt))):
        click.echo(f"{key + ':':<14}{value}")
    for rcpt, s in m.state.recipients.items():
        click.echo(f"  {s.status:<10} {rcpt}  attempts={s.attempts}"
                   + (f" hop={s.hop}" if s.hop else "") + (f"  {s.reply}" if s.reply else ""))


@queue.command("flush")
@click.argument("queue_ids", nargs=-1)
@click.option("--wait", default=3.0, show_default=True,
              help="Seconds to wait for the running relay to take the request.")
@click.pass_context
def flush(ctx: click.Context, queue_ids: tuple[str, ...], wait: float) -> None:
    """Retry now: every waiting message, or the ones named."""
    spool = _spool(ctx)
    requests = [q.request_flush(spool, _id(spool, i)) for i in queue_ids] or \
        [q.request_flush(spool)]
    deadline = time.monotonic() + wait
    while any(p.exists() for p in requests) and time.monotonic() < deadline:
        time.sleep(0.05)
    if any(p.exists() for p in requests):
        click.echo("flush requested; no running relay took it yet (it will when it starts)")
    else:
        click.echo("flush requested; the relay is retrying now")


@queue.command("delete")
@click.argument("queue_ids", nargs=-1, required=True)
@click.pass_context
def delete(ctx: click.Context, queue_ids: tuple[str, ...]) -> None:
    """Remove messages without notifying anyone."""
    spool = _spool(ctx)
    for prefix in queue_ids:
        queue_id = _id(spool, prefix)
        click.echo(f"{queue_id}: " + ("deleted" if q.delete(spool, queue_id) else "already gone"))


@queue.command("hold")
@click.argument("queue_ids", nargs=-1, required=True)
@click.pass_context
def hold(ctx: click.Context, queue_ids: tuple[str, ...]) -> None:
    """Keep messages in the queue without delivery attempts until released."""
    spool = _spool(ctx)
    for prefix in queue_ids:
        queue_id = _id(spool, prefix)
        q.hold(spool, queue_id)
        click.echo(f"{queue_id}: held")


@queue.command("release")
@click.argument("queue_ids", nargs=-1, required=True)
@click.pass_context
def release(ctx: click.Context, queue_ids: tuple[str, ...]) -> None:
    """Release held messages and try them now."""
    spool = _spool(ctx)
    for prefix in queue_ids:
        queue_id = _id(spool, prefix)
        click.echo(f"{queue_id}: " + ("released" if q.release(spool, queue_id) else "not held"))
