"""Request and response bodies: what the OpenAPI schema promises, and checks it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WhoAmI(BaseModel):
    name: str
    scope: str
    node: str
    refresh_seconds: float
    public_feeds: bool


class BlockIn(_In):
    network: str = Field(max_length=64, examples=["198.51.100.0/24"],
                         description="An address or CIDR network.")
    duration: str | float = Field(default="24h", examples=["7d"],
                                  description="Seconds, or 30m, 24h, 7d...")
    reason: str = Field(default="manual", max_length=500)


class BlockOut(BaseModel):
    network: str
    reason: str
    source: str = Field(description="auto (scored) or manual")
    level: int
    score: float
    first_seen: str | None
    last_seen: str | None
    expires: str | None
    seconds_left: int


class AllowIn(_In):
    network: str = Field(max_length=64, examples=["203.0.113.5"])
    reason: str = Field(default="", max_length=500)


class AllowOut(BaseModel):
    network: str
    reason: str
    source: str = Field(description="store (API, CLI) or config (blocklist.allow)")
    created_at: str | None


class SenderIn(_In):
    list: Literal["allow", "block"]
    entry: str = Field(max_length=1000, examples=["spam.test", "news@partner.example", "<>"],
                       description="An address, a domain (and its subdomains) or <>; with "
                                   "field helo, a HELO name.")
    field: Literal["sender", "helo"] = "sender"
    reason: str = Field(default="", max_length=500)


class SenderOut(BaseModel):
    list: str
    field: str
    entry: str
    reason: str
    created_at: str | None


class Changed(BaseModel):
    ok: bool
    network: str
    detail: str


class ReasonRow(BaseModel):
    reason: str
    weight: float
    count: int
    points: float
    first: str | None
    last: str | None


class EventRow(BaseModel):
    ts: str | None
    stage: str
    action: str
    reason: str
    code: int
    count: int = Field(description="Events this row stands for: a flood folds a minute of "
                                   "one host and reason into one row, its recipient a sample.")
    recipient: str
    detail: str


class HostDetail(BaseModel):
    address: str
    host: str = Field(description="What it is counted as (IPv6: its prefix).")
    score: float
    threshold: float
    window_seconds: float
    reasons: list[ReasonRow]
    state: str = Field(description="never | blocked | observed (observe mode: would have "
                                   "been blocked) | expired | pending | clear")
    why: str
    block: BlockOut | None
    events: list[EventRow]


class HostRow(BaseModel):
    """One row of `floodgate report hosts --format json`."""

    host: str
    connections: int
    accepted: int
    rejected: int
    unknown_rcpt: int
    trap: int
    relay_denied: int
    virus: int
    spam: int
    dnsbl: int
    blocked: int
    protocol: int
    other: int
    tempfail: int
    observed: int  # refusals observe mode recorded but did not make
    greylisted: int  # [greylist]: attempts told to retry (also counted in tempfail)
    greylist_passed: int  # ... and retries that passed
    score: float
    blocked_until: str | None


class TimelineOut(BaseModel):
    """`floodgate report timeline --format json`, plus the outcome names in chart order."""

    start: str
    end: str
    bucket: str
    outcomes: list[str]
    buckets: list[dict[str, int | str]]


class BlockedNow(BaseModel):
    network: str
    until: str
    level: int
    reason: str


class SummaryOut(BaseModel):
    """`floodgate report summary --format json`."""

    since: str
    now: str
    outcomes: dict[str, int]
    connections: int
    delivery: dict[str, int]
    viruses: dict[str, int]
    recipients: dict[str, int]
    dnsbl_zones: dict[str, int]
    blocked: list[BlockedNow]
    queued: int
    held: int
    greylist: dict[str, int] = Field(
        description="greylisted attempts and greylist_passed retries ([greylist])")


class QueuedOut(BaseModel):
    queue_id: str
    sender: str
    size: int
    age_seconds: int
    held: bool
    attempts: int
    pending: list[str]
    next_attempt: float | None
    last_reply: str


class QueueOut(BaseModel):
    queued: int
    held: int
    examined: int = Field(description="oldest messages the figures below are counted over")
    deferred: int = Field(description="messages with at least one failed attempt")
    recipients: int = Field(description="recipients still pending")
    oldest_seconds: int | None
    by_destination: dict[str, int]
    messages: list[QueuedOut]


class AuditRow(BaseModel):
    id: int
    ts: str | None
    who: str
    action: str
    target: str
    detail: str


class TraceVerdict(BaseModel):
    filter: str = Field(description="clamav, spamassassin, dnsbl")
    verdict: str = Field(description="clean, a virus name, score/threshold, DNSBL zones")
    source: str = Field(description="scanned, cached (the verdict cache), looked_up, "
                        "unscanned")


class TraceEvent(BaseModel):
    ts: str
    stage: str
    action: str
    reason: str
    code: int
    recipient: str
    detail: str
    queue_id: str
    message_id: str
    size: int | None
    count: int = Field(description="more than 1: a flood folded into this row")
    verdicts: list[TraceVerdict] = Field(
        description="each filter's own verdict, in the order they ran")
    folded: list[str] = Field(description="a folded row: the other sessions it stands for")
    folded_more: bool = Field(description="a folded row that stood for more sessions than "
                              "it names")


class TraceSession(BaseModel):
    session: str = Field(description="the [ref ...] of the session's replies ('' for a "
                         "message seen without its session)")
    node: str
    client: str
    helo: str
    sender: str
    queue_ids: list[str]
    events: list[TraceEvent]


class TraceOut(BaseModel):
    sessions: list[TraceSession]
    more: int = Field(description="sessions matched but not shown: narrow the search")
