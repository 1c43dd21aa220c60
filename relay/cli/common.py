"""What every `floodgate` command shares: the consoles, the error exit, the configuration
and the store. Sub-command modules import this, never `relay.cli.main`, so the command tree
is built top-down without cycles."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from rich.console import Console
from rich.markup import escape

from relay.config import Config, ConfigError, config_path, load_config
from relay.logs import error_prefix
from relay.store.database import StoreError, current_revision, describe, head_revision, make_engine
from relay.store.database import upgrade as upgrade_schema

err = Console(stderr=True, soft_wrap=True, highlight=False)
out = Console(soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"{error_prefix()}[bold red]floodgate: error:[/] {escape(message)}",
              highlight=False, markup=True)
    sys.exit(code)


def load(ctx: click.Context) -> Config:
    path = config_path(ctx.obj["config"])
    try:
        return load_config(path)
    except ConfigError as e:
        for problem in e.problems:
            err.print(f"{error_prefix()}{e.path}: {problem}", highlight=False, markup=False)
        sys.exit(2)



def open_store(config: Config):  # type: ignore[no-untyped-def]
    """The store's engine, with the schema created if the database is empty."""
    engine = make_engine(config.store.url)
    try:
        current = current_revision(engine)
        if current is None:
            upgrade_schema(engine)
        elif current != head_revision():
            fail(f"database schema is at {current}, needs {head_revision()}: "
                 "run `floodgate db upgrade`")
    except StoreError as e:
        fail(str(e))
    except Exception as e:
        fail(f"cannot open the store: {describe(e)}")
    return engine
