"""Bearer tokens: from `[web.tokens]` or made by `floodgate token create` (stored hashed).

Tokens are long random strings, so one SHA-256 is enough to keep the stored form useless to
a reader of the database (no slow password hash: a poller presents its token every time).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select

from relay.config.web import Scope, WebConfig
from relay.store.web_tables import ApiToken

TOKEN_PREFIX = "fg_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the token's name (recorded in the audit trail) and its scope."""

    name: str
    scope: Scope

    @property
    def admin(self) -> bool:
        return self.scope == "admin"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config_principals(web: WebConfig) -> dict[str, Principal]:
    """Config tokens by digest; unnamed ones are called `config:` + the digest's start, so
    the audit trail never shows a secret."""
    out: dict[str, Principal] = {}
    for token, spec in web.tokens.items():
        h = digest(token)
        out[h] = Principal(spec.name or f"config:{h[:8]}", spec.scope)
    return out


class Authenticator:
    """Resolves a presented token to a Principal, config tokens first, then the store."""

    def __init__(self, web: WebConfig, engine: Engine):
        self.static = config_principals(web)
        self.engine = engine

    def lookup(self, token: str) -> Principal | None:
        if not token or len(token) > 512:
            return None
        h = digest(token)
        found = self.static.get(h)
        if found is not None:
            return found
        with self.engine.connect() as conn:
            row = conn.execute(select(ApiToken.name, ApiToken.scope)
                               .where(ApiToken.token_hash == h)).first()
        if row is None or row.scope not in ("read", "admin"):
            return None
        return Principal(row.name, row.scope)


# -- tokens kept in the store (the CLI) --------------------------------------------------


def create_token(engine: Engine, name: str, scope: Scope) -> str:
    """A new random token; only its digest is stored. ValueError if the name is taken."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        taken = conn.execute(select(ApiToken.id).where(ApiToken.name == name)).first()
        if taken is not None:
            raise ValueError(f"a token named {name!r} exists already")
        conn.execute(ApiToken.__table__.insert().values(
            name=name, token_hash=digest(token), scope=scope, created_at=datetime.now(UTC)))
    return token


def list_tokens(engine: Engine) -> list[tuple[str, str, datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(select(ApiToken.name, ApiToken.scope, ApiToken.created_at)
                            .order_by(ApiToken.name)).all()
    return [(n, s, c.replace(tzinfo=UTC) if c.tzinfo is None else c) for n, s, c in rows]


def revoke_token(engine: Engine, name: str) -> bool:
    with engine.begin() as conn:
        return bool(conn.execute(delete(ApiToken).where(ApiToken.name == name)).rowcount)
