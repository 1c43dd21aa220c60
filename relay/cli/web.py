"""`floodgate web` (console, API, feeds) and `floodgate token create|list|revoke`."""

from __future__ import annotations

import click

from relay.cli import common as cli


@click.command("web", short_help="Serve the web console, the JSON API and the feeds.")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Override web.listen [default: 127.0.0.1:8025].")
@click.pass_context
def web(ctx: click.Context, listen: str | None) -> None:
    """Serve the web console, the JSON API and the blocklist feeds until SIGTERM."""
    from relay.config.web import WebConfig
    from relay.web.app import WebError, run
    config = cli.load(ctx)
    if listen is not None:
        try:
            web_cfg = WebConfig.model_validate({**config.web.model_dump(), "listen": listen})
        except ValueError as e:
            cli.fail(f"--listen: {e}", 2)
        config = config.model_copy(update={"web": web_cfg})
    if not config.web.tokens:
        cli.err.print("floodgate: note: no [web.tokens] configured; only tokens made with "
                      "`floodgate token create` can sign in", highlight=False)
    try:
        run(config)
    except WebError as e:
        cli.fail(str(e))


@click.group("token")
def token() -> None:
    """API tokens kept in the store (only their SHA-256 is stored)."""


@token.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "admin"]), default="read",
              show_default=True)
@click.pass_context
def token_create(ctx: click.Context, name: str, scope: str) -> None:
    """Make a token called NAME (the audit trail shows it); printed once, never again."""
    from relay.web.auth import create_token
    if not 0 < len(name) <= 64 or name.startswith("config:"):
        cli.fail("NAME: 1 to 64 characters, not starting with 'config:'")
    engine = cli.open_store(cli.load(ctx))
    try:
        secret = create_token(engine, name, scope)  # type: ignore[arg-type]
    except ValueError as e:
        cli.fail(str(e))
    click.echo(secret)
    click.echo(f"token {name!r} ({scope}) created; it is shown only now: keep it safe",
               err=True)


@token.command("list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Tokens in the store (names and scopes; the secrets are not kept)."""
    from relay.web.auth import list_tokens
    for name, scope, created in list_tokens(cli.open_store(cli.load(ctx))):
        click.echo(f"{name}\t{scope}\t{created:%Y-%m-%d %H:%M:%S} UTC")


@token.command("revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Delete the token NAME: it stops working at once."""
    from relay.web.auth import revoke_token
    if not revoke_token(cli.open_store(cli.load(ctx)), name):
        cli.fail(f"no token named {name!r}")
    click.echo(f"revoked {name}")
