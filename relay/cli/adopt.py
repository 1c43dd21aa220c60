"""`floodgate policy` and `floodgate milter`: Floodgate's decisions for an existing Postfix
(README "Beside an existing Postfix")."""

from __future__ import annotations

import click

from relay.cli.common import fail, load
from relay.config import config_path


def _run(ctx: click.Context, kind: str, listen: str) -> None:
    from relay.service.adopt import serve_front
    from relay.service.server import StartupError

    config = load(ctx)
    try:
        serve_front(config, kind, listen, config_path(ctx.obj["config"]))
    except StartupError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass


@click.command(short_help="Policy service for Postfix: the relay's client checks.")
@click.option("--listen", default="127.0.0.1:10040", show_default=True,
              help="HOST:PORT for Postfix's check_policy_service inet:HOST:PORT.")
@click.pass_context
def policy(ctx: click.Context, listen: str) -> None:
    """Answer Postfix's SMTPD policy requests (check_policy_service) with the relay's
    decisions: blocked host, DNSBL, unknown recipient, relay attempt; DUNNO otherwise.
    Every decision is an event, as at the relay. Runs until SIGTERM; SIGHUP reloads."""
    _run(ctx, "policy", listen)


@click.command(short_help="Milter for Postfix: the relay's content scanning.")
@click.option("--listen", default="127.0.0.1:10041", show_default=True,
              help="HOST:PORT, or a unix socket path, for Postfix's smtpd_milters.")
@click.pass_context
def milter(ctx: click.Context, listen: str) -> None:
    """Scan each message Postfix receives (ClamAV, SpamAssassin, the verdict cache) and
    answer with the relay's refusal, its tempfail, or accept with its X-Spam-* headers.
    Runs until SIGTERM; SIGHUP reloads."""
    _run(ctx, "milter", listen)
