"""The ASGI application: the API, the blocklist feeds, the console, and how it is served.

`floodgate web` runs it with uvicorn on `[web] listen` (loopback by default). It needs no
relay in the same process: everything it shows or changes goes through the store, which the
relays poll (`store.refresh_interval`), so a block added here reaches every relay's gate.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from relay.config import Config
from relay.logs import kv
from relay.store.database import StoreError, current_revision, describe, head_revision, make_engine
from relay.store.database import upgrade as upgrade_schema
from relay.web import feeds
from relay.web.api import BEARER, principal, router
from relay.web.auth import Authenticator
from relay.web.body_limit import BodyLimit

log = logging.getLogger("floodgate.web")
STATIC = Path(__file__).resolve().parent / "static"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class WebError(Exception):
    """The web server cannot start; the message says what to fix."""


def feed_access(request: Request,
                creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
                ) -> None:
    """Feeds are public with `web.public_feeds`, else they need a read token."""
    if not request.app.state.config.web.public_feeds:
        principal(request, creds)


def _feed(fmt: str, suffix: str, what: str):  # type: ignore[no-untyped-def]
    def handler(request: Request, _: Annotated[None, Depends(feed_access)],
                if_none_match: Annotated[str | None, Header()] = None,
                if_modified_since: Annotated[str | None, Header()] = None) -> Response:
        cache: feeds.FeedCache = request.app.state.feeds
        snap = cache.get()
        headers = {"ETag": feeds.etag(snap, fmt), "Last-Modified": feeds.last_modified(snap),
                   "Cache-Control": "no-cache"}
        if feeds.not_modified(snap, fmt, if_none_match, if_modified_since):
            return Response(status_code=304, headers=headers)
        return Response(cache.body(snap, fmt), media_type=feeds.MEDIA[fmt], headers=headers)

    handler.__name__ = f"blocklist_{suffix}"
    handler.__doc__ = (f"{what}. Answers 304 to `If-None-Match` with the last ETag (or "
                       "`If-Modified-Since`) while the list is unchanged.")
    return handler


def check_store(engine: Engine) -> None:
    """An empty database gets the schema; an outdated one is an operator step."""
    try:
        empty = not inspect(engine).get_table_names()
        current = current_revision(engine)
    except Exception as e:
        raise WebError(f"cannot open the store: {describe(e)}") from e
    if empty:
        try:
            upgrade_schema(engine)
        except StoreError as e:
            raise WebError(str(e)) from e
    elif current != head_revision():
        raise WebError(f"database schema is at {current or 'empty'}, needs {head_revision()}: "
                       "run `floodgate db upgrade`")


def create_app(config: Config, engine: Engine | None = None) -> FastAPI:
    engine = engine or make_engine(config.store.url)
    app = FastAPI(title="Floodgate", version="1", docs_url=None, redoc_url=None,
                  description="Hosts, blocks, allowlist, reports and queue of a Floodgate "
                  "relay, and its blocklist for firewalls. Authenticate with "
                  "`Authorization: Bearer TOKEN`; changes need an admin token.")
    app.state.config = config
    app.state.engine = engine
    app.state.auth = Authenticator(config.web, engine)
    app.state.feeds = feeds.FeedCache(config, engine)
    app.include_router(router)
    for fmt, suffix, what in (("plain", "txt", "One network per line (pfSense/OPNsense URL "
                               "table)"), ("nft", "nft", "An `nft -f` script"),
                              ("json", "json", "A JSON list of {network, reason, score, "
                               "expires}")):
        app.add_api_route(f"/blocklist.{suffix}", _feed(fmt, suffix, what), methods=["GET"],
                          tags=["feeds"], response_class=Response,
                          responses={200: {"content": {feeds.MEDIA[fmt].split(";")[0]: {}}},
                                     304: {"description": "unchanged"}})

    @app.exception_handler(SQLAlchemyError)
    async def _store_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("store error %s", kv(error=describe(exc)))
        return JSONResponse({"detail": f"store unavailable: {describe(exc)}"}, 503)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/console/")

    @app.get("/healthz", include_in_schema=False)
    def _health() -> dict[str, bool]:
        return {"ok": True}

    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
    # added last, so outermost of the middleware: no body is read before it is measured
    app.add_middleware(BodyLimit, limit=config.web.max_body_size)
    return app


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            log.info("web ready %s", kv(listen=self.config.host + f":{self.config.port}"))


def run(config: Config) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn finishes requests in flight)."""
    engine = make_engine(config.store.url)
    check_store(engine)
    host, port = config.web.endpoint()
    server = _Server(uvicorn.Config(create_app(config, engine), host=host, port=port,
                                    log_config=None, access_log=False, server_header=False,
                                    proxy_headers=False))
    server.run()  # a port it cannot bind: uvicorn logs why and exits 1
    if not server.started:
        raise WebError(f"web.listen {config.web.listen}: cannot listen (see the log)")
