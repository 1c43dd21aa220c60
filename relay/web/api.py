"""The JSON API under `/api`: reads need any token, changes an admin token, and every
change is written to the audit trail under the token's name."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from blocklist import blocks, senders
from blocklist import operations as ops
from blocklist import reports as rp
from blocklist.hosts import host_key
from relay.config import Config
from relay.config.types import parse_duration
from relay.events import trace as tr
from relay.reasons import Reason
from relay.web import data
from relay.web.auth import Authenticator, Principal
from relay.web.schemas import (
    AllowIn,
    AllowOut,
    AuditRow,
    BlockIn,
    BlockOut,
    Changed,
    HostDetail,
    HostRow,
    QueueOut,
    SenderIn,
    SenderOut,
    SummaryOut,
    TimelineOut,
    TraceOut,
    WhoAmI,
)

BEARER = HTTPBearer(auto_error=False, description="A read or admin token.")
BUCKETS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5),
           "15m": timedelta(minutes=15), "1h": timedelta(hours=1)}
MAX_SINCE = 400 * 86_400.0
MAX_BLOCK = 3650 * 86_400.0
MAX_BUCKETS = 5_000
Bucket = Literal["1m", "5m", "15m", "1h"]
assert set(get_args(Bucket)) == set(BUCKETS)


def config_of(request: Request) -> Config:
    return request.app.state.config  # type: ignore[no-any-return]


def engine_of(request: Request) -> Any:
    return request.app.state.engine


def principal(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
              ) -> Principal:
    """Any valid token, else 401 with the Bearer challenge."""
    auth: Authenticator = request.app.state.auth
    found = auth.lookup(creds.credentials) if creds is not None else None
    if found is None:
        raise HTTPException(401, "a valid bearer token is needed",
                            headers={"WWW-Authenticate": 'Bearer realm="floodgate"'})
    return found


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise HTTPException(403, f"token {who.name!r} may read but not change anything")
    return who


Reader = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
router = APIRouter(prefix="/api", responses={401: {"description": "no or unknown token"}})


def seconds(value: str | float, name: str, maximum: float) -> float:
    try:
        secs = parse_duration(value)
    except ValueError as e:
        raise HTTPException(422, f"{name}: {e}") from None
    if not 0 < secs <= maximum:
        raise HTTPException(422, f"{name}: must be more than 0 and at most {maximum:g}s")
    return secs


def parse_network(value: str) -> str:
    try:
        return ops.network(value)
    except ops.BadNetwork as e:
        raise HTTPException(422, str(e)) from None


@router.get("/whoami", response_model=WhoAmI, tags=["session"])
def whoami(request: Request, who: Reader) -> dict[str, Any]:
    """The token's name and scope, and the console's settings."""
    cfg = config_of(request)
    return {"name": who.name, "scope": who.scope, "node": cfg.relay.node,
            "refresh_seconds": cfg.web.refresh, "public_feeds": cfg.web.public_feeds}


# -- hosts and reports -------------------------------------------------------------------


@router.get("/hosts/{address}", response_model=HostDetail, tags=["hosts"])
def host(request: Request, _: Reader, address: str,
         events: Annotated[int, Query(ge=0, le=500)] = 20) -> dict[str, Any]:
    """Score over the scoring window, events by reason with their weights, block state and
    why (`floodgate hosts show`)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise HTTPException(422, f"{address!r} is not an IP address") from None
    view = ops.show(config_of(request), engine_of(request), address, events)
    return data.host_view(view, datetime.now(UTC))


@router.get("/reports/hosts", response_model=list[HostRow], tags=["reports"])
def report_hosts(request: Request, _: Reader, since: str = "24h",
                 top: Annotated[int, Query(ge=0, le=10_000)] = 20,
                 reason: Reason | None = None) -> list[dict[str, Any]]:
    """Most refused hosts first (`floodgate report hosts --format json`); top=0: all."""
    cfg, engine = config_of(request), engine_of(request)
    window = seconds(since, "since", MAX_SINCE)
    start, now = rp.since_now(window)
    score_since = start if cfg.scoring.window == window else \
        now - timedelta(seconds=cfg.scoring.window)
    rows = rp.hosts_report(engine, since=start, top=top,
                           reason=reason.value if reason is not None else None,
                           weights=cfg.scoring.all_weights(), score_since=score_since,
                           active=blocks.active_blocks(engine, now))
    return [h.row() for h in rows]


@router.get("/reports/timeline", response_model=TimelineOut, tags=["reports"])
def report_timeline(request: Request, _: Reader, since: str = "6h",
                    bucket: Bucket = "5m") -> dict[str, Any]:
    """Outcomes per bucket, zero-filled (`floodgate report timeline --format json`)."""
    window = seconds(since, "since", MAX_SINCE)
    if window / BUCKETS[bucket].total_seconds() > MAX_BUCKETS:
        raise HTTPException(422, f"more than {MAX_BUCKETS} buckets: use a larger bucket")
    start, now = rp.since_now(window)
    tl = rp.timeline_report(engine_of(request), since=start, now=now, step=BUCKETS[bucket])
    return {"start": tl.start.isoformat(), "end": tl.end.isoformat(), "bucket": bucket,
            "outcomes": list(rp.OUTCOMES), "buckets": tl.rows()}


@router.get("/reports/summary", response_model=SummaryOut, tags=["reports"])
def report_summary(request: Request, _: Reader, since: str = "24h",
                   top: Annotated[int, Query(ge=1, le=1000)] = 10) -> dict[str, Any]:
    """Totals by outcome, top viruses, refused recipients, DNSBL zones, blocks, queue."""
    cfg, engine = config_of(request), engine_of(request)
    start, now = rp.since_now(seconds(since, "since", MAX_SINCE))
    queued, held = data.queue_counts(cfg)
    s = rp.summary_report(engine, since=start, now=now, limit=top,
                          active=blocks.active_blocks(engine, now), queued=queued, held=held)
    return s.as_dict()


@router.get("/trace", response_model=TraceOut, tags=["reports"])
def trace(request: Request, _: Reader, ref: Annotated[str | None, Query(max_length=64)] = None,
          sender: Annotated[str | None, Query(alias="from", max_length=320)] = None,
          to: Annotated[str | None, Query(max_length=320)] = None,
          client: Annotated[str | None, Query(max_length=45)] = None,
          message_id: Annotated[str | None, Query(max_length=255)] = None,
          since: str | None = None) -> dict[str, Any]:
    """What happened to a session or message, in order (`floodgate trace --format json`):
    by `ref` (a reply's [ref ...] or a queue id), or by `from`, `to`, `client` and
    `message_id`; `since` defaults to 24h for a search, no limit for a ref."""
    query = tr.Query(ref=ref, sender=sender, recipient=to, client=client,
                     message_id=message_id,
                     host=host_key(client, config_of(request).store.ipv6_prefix)
                     if client else None,
                     since=tr.since(seconds(since, "since", MAX_SINCE) if since
                                    else None if ref else 86_400.0))
    if query.empty():
        raise HTTPException(422, "give ref, or at least one of from, to, client, message_id")
    return tr.as_data(tr.find(engine_of(request), query))


@router.get("/queue", response_model=QueueOut, tags=["queue"])
def queue(request: Request, _: Reader,
          limit: Annotated[int, Query(ge=0, le=1000)] = 50) -> dict[str, Any]:
    """What waits in the spool: counts, destinations, and the oldest messages."""
    return data.queue_summary(config_of(request), limit)


# -- blocks ------------------------------------------------------------------------------


@router.get("/blocks", response_model=list[BlockOut], tags=["blocks"])
def block_list(request: Request, _: Reader) -> list[dict[str, Any]]:
    """Active blocks, longest first (`floodgate block list`)."""
    now = datetime.now(UTC)
    return [data.block_view(b, now) for b in blocks.active_blocks(engine_of(request), now)]


@router.post("/blocks", response_model=BlockOut, status_code=201, tags=["blocks"],
             responses={403: {"description": "read token"},
                        409: {"description": "a network that is never blocked"}})
def block_add(request: Request, who: Admin, body: BlockIn) -> dict[str, Any]:
    """Block a network now for `duration` (`floodgate block add`)."""
    cfg, engine = config_of(request), engine_of(request)
    net = parse_network(body.network)
    secs = seconds(body.duration, "duration", MAX_BLOCK)
    try:
        state = ops.block(cfg, engine, net, secs, body.reason, actor=who.name,
                          node=f"web:{who.name}")
    except ops.NeverBlocked as e:
        raise HTTPException(409, str(e)) from None
    return data.block_view(state, datetime.now(UTC))


@router.delete("/blocks/{network:path}", response_model=Changed, tags=["blocks"],
               responses={403: {"description": "read token"},
                          404: {"description": "not blocked"}})
def block_remove(request: Request, who: Admin, network: str) -> dict[str, Any]:
    """Lift an active block now. It is kept as history, so the offences that caused it
    do not block the host again at the next scoring run."""
    net = parse_network(network)
    try:
        ops.unblock(engine_of(request), net, actor=who.name)
    except ops.NotFound as e:
        raise HTTPException(404, str(e)) from None
    return {"ok": True, "network": net, "detail": f"unblocked {net}"}


# -- allowlist ---------------------------------------------------------------------------


@router.get("/allow", response_model=list[AllowOut], tags=["allowlist"])
def allow_list(request: Request, _: Reader) -> list[dict[str, Any]]:
    """Networks never blocked: the configuration's and the store's."""
    return [{"network": a.network, "reason": a.reason, "source": a.source,
             "created_at": data.iso(a.created_at)}
            for a in ops.allow_list(config_of(request), engine_of(request))]


@router.post("/allow", response_model=Changed, status_code=201, tags=["allowlist"],
             responses={403: {"description": "read token"}})
def allow_add(request: Request, who: Admin, body: AllowIn) -> dict[str, Any]:
    """Never block a network; a block on it stops taking effect (`floodgate allow add`)."""
    net = parse_network(body.network)
    added = ops.allow_add(engine_of(request), net, body.reason, actor=who.name)
    return {"ok": True, "network": net,
            "detail": f"allowed {net}" if added else f"{net} was already allowed"}


@router.delete("/allow/{network:path}", response_model=Changed, tags=["allowlist"],
               responses={403: {"description": "read token"},
                          404: {"description": "not in the allowlist"}})
def allow_remove(request: Request, who: Admin, network: str) -> dict[str, Any]:
    net = parse_network(network)
    try:
        ops.allow_remove(engine_of(request), net, actor=who.name)
    except ops.NotFound as e:
        raise HTTPException(404, str(e)) from None
    return {"ok": True, "network": net, "detail": f"removed {net} from the allowlist"}


# -- sender lists ------------------------------------------------------------------------


def parse_entry(value: str, field: str) -> str:
    try:
        return senders.pattern(value, field)
    except senders.BadPattern as e:
        raise HTTPException(422, str(e)) from None


@router.get("/senders", response_model=list[SenderOut], tags=["senders"])
def sender_list(request: Request, _: Reader) -> list[dict[str, Any]]:
    """The sender allow and block lists (`floodgate sender allow|block list`)."""
    return [{"list": r.list, "field": r.field, "entry": r.pattern, "reason": r.reason,
             "created_at": data.iso(r.created_at)} for r in senders.rules(engine_of(request))]


@router.post("/senders", response_model=Changed, status_code=201, tags=["senders"],
             responses={403: {"description": "read token"}})
def sender_add(request: Request, who: Admin, body: SenderIn) -> dict[str, Any]:
    """Allow or refuse mail by envelope sender, sender domain, From domain or HELO name
    (`floodgate sender block add spam.test`)."""
    entry = parse_entry(body.entry, body.field)
    added = senders.add(engine_of(request), body.list, entry, body.reason, actor=who.name,
                        field=body.field)
    return {"ok": True, "network": entry,
            "detail": f"{body.list}: {body.field} {entry}" if added
            else f"{body.field} {entry} was already on the {body.list} list"}


@router.delete("/senders/{list_}/{field}/{entry:path}", response_model=Changed,
               tags=["senders"], responses={403: {"description": "read token"},
                                            404: {"description": "not on the list"}})
def sender_remove(request: Request, who: Admin, list_: Literal["allow", "block"],
                  field: Literal["sender", "helo"], entry: str) -> dict[str, Any]:
    pattern = parse_entry(entry, field)
    try:
        senders.remove(engine_of(request), list_, pattern, actor=who.name, field=field)
    except ops.NotFound as e:
        raise HTTPException(404, str(e)) from None
    return {"ok": True, "network": pattern, "detail": f"removed {pattern} from the {list_} list"}


@router.get("/audit", response_model=list[AuditRow], tags=["audit"])
def audit(request: Request, _: Reader,
          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Changes to blocks and the allowlist, from the API or the CLI, newest first: who,
    when, what."""
    return [data.audit_view(a) for a in ops.audit_list(engine_of(request), limit)]
