"""`floodgate replay`: the blocks a changed scoring policy would have made over the recorded
events, set against the blocks the scorer really made, before the change is made."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import click
from rich.table import Table

from blocklist import blocks
from blocklist import operations as ops
from blocklist.replay import Actual, Comparison, Policy, Replay, compare, split_history
from relay.cli import common as cli
from relay.config.scoring import event_reason
from relay.config.types import parse_duration


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _weights(_ctx: click.Context, _param: click.Parameter,
             values: tuple[str, ...]) -> dict[str, float]:
    """`reason=weight`, each reason one of relay/reasons.py's (a misspelt one would weigh
    nothing in silence, as in `[scoring.weights]`)."""
    weights: dict[str, float] = {}
    for value in values:
        key, sep, number = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r}: give reason=weight, e.g. unknown_rcpt=2")
        try:
            reason = event_reason(key.strip())
        except ValueError as e:
            why = str(e).removeprefix("unknown key: ")
            raise click.BadParameter(f"{key.strip()!r} is {why}") from None
        try:
            weights[reason] = float(number)
        except ValueError:
            raise click.BadParameter(f"{value!r}: {number!r} is not a number") from None
    return weights


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.command(short_help="Which hosts a changed scoring policy would have blocked.")
@click.option("--since", default="24h", show_default=True, callback=_duration,
              help="Replay the events of this period: 30m, 24h, 7d...")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True),
              help="Host threshold [default: scoring.threshold].")
@click.option("--network-threshold", type=click.FloatRange(min=0),
              help="/24 threshold, 0 for none [default: scoring.network_threshold].")
@click.option("--weight", "weights", multiple=True, metavar="REASON=W", callback=_weights,
              help="A reason's weight, repeatable; the others as configured.")
@click.option("--window", callback=_duration,
              help="How far back a score counts [default: scoring.window].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def replay(ctx: click.Context, since: float, threshold: float | None,
           network_threshold: float | None, weights: dict[str, float], window: float | None,
           fmt: str) -> None:
    """Re-score the events recorded since --since under the configured scoring with the
    changes given, and print which hosts and /24 networks would have been blocked (and
    from when) and which of the scorer's real blocks would not have been made. With no
    changes it shows the blocks the scorer made."""
    config = cli.load(ctx)
    engine = cli.open_store(config)
    scoring, blocklist = config.scoring, config.blocklist
    policy = Policy(
        weights={**scoring.all_weights(), **weights},
        threshold=scoring.threshold if threshold is None else threshold,
        network_threshold=(scoring.network_threshold if network_threshold is None
                           else network_threshold),
        window=scoring.window if window is None else window,
        duration=blocklist.duration, recidive_window=blocklist.recidive_window,
        protected=ops.protection(config, engine).why, floor=scoring.bonus_floor)
    now = datetime.now(UTC)
    start = now - timedelta(seconds=since)
    # a score at `start` counts the window before it: replay from there, report from start
    warm = start - timedelta(seconds=policy.window)
    rows = blocks.block_rows(engine)
    history, given = split_history(rows, warm, blocklist.duration)
    reasons = [r for r, w in policy.weights.items() if w]
    made = Replay(policy, history, given, ops.unblocks(engine, warm)).run(
        blocks.events_in_order(engine, since=warm, reasons=reasons), until=now)
    actual = [Actual(s.network, created, s.score, s.level, s.reason, s.source)
              for s, created in rows]
    result = compare(made, actual, start)
    changes = _changes(config.scoring, policy)
    if not scoring.enabled:
        cli.err.print("note: [scoring] enabled = false: the scorer made no blocks; these are "
                      "the ones it would make", markup=False, highlight=False)
    if fmt == "json":
        click.echo(json.dumps(_json(result, start, now, policy, changes), indent=2))
        return
    _table(result, start, policy, changes)
    sys.stdout.flush()


def _changes(scoring, policy: Policy) -> dict[str, tuple[float, float]]:  # type: ignore[no-untyped-def]
    """What the replay changes: name -> (configured, replayed)."""
    before = {"threshold": scoring.threshold, "network_threshold": scoring.network_threshold,
              "window": scoring.window}
    after = {"threshold": policy.threshold, "network_threshold": policy.network_threshold,
             "window": policy.window}
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    configured = scoring.all_weights()
    for reason, weight in policy.weights.items():
        if configured.get(reason, 0.0) != weight:
            changed[f"weight {reason}"] = (configured.get(reason, 0.0), weight)
    return changed


def _json(result: Comparison, start: datetime, now: datetime, policy: Policy,
          changes: dict[str, tuple[float, float]]) -> dict[str, object]:
    return {
        "since": start.isoformat(), "until": now.isoformat(),
        "policy": {"threshold": policy.threshold,
                   "network_threshold": policy.network_threshold, "window": policy.window,
                   "weights": policy.weights},
        "changes": {k: {"configured": a, "replayed": b} for k, (a, b) in changes.items()},
        "would_block": [{**b.as_dict(), "blocked_now": real} for b, real in result.blocked],
        "would_not_block": [{"network": a.network, "blocked_at": a.created.isoformat(),
                             "score": a.score, "level": a.level, "reason": a.reason}
                            for a in result.not_blocked],
    }


def _tidy(table: Table) -> None:
    """Nothing cut short: a wide table scrolls rather than lies (as `report` prints)."""
    table.padding = (0, 1)
    table.collapse_padding = True
    table.pad_edge = False
    for col in table.columns:
        col.no_wrap = True
        col.min_width = max(len(str(c)) for c in [col.header, *col.cells])


def _table(result: Comparison, start: datetime, policy: Policy,
           changes: dict[str, tuple[float, float]]) -> None:
    out = cli.out
    what = ", ".join(f"{k} {a:g} -> {b:g}" for k, (a, b) in changes.items())
    out.print(f"replay since {_when(start)} UTC: "
              + (what or "the configured scoring (no changes)"), highlight=False, markup=False)
    new = sum(1 for _, real in result.blocked if not real)
    table = Table("network", "kind", "from (UTC)", "score", "offences", "level", "until (UTC)",
                  "reasons", "blocked now",
                  title=f"would be blocked: {len(result.blocked)} ({new} not blocked now)")
    for b, real in result.blocked:
        now = "yes" if real else "NEW"
        if b.unblocked is not None:  # the operator's decision, never hidden
            now = f"unblocked by {b.unblocked.who} at {_when(b.unblocked.ts)}"
        table.add_row(b.network, b.kind, _when(b.start), f"{b.score:g}", str(b.offences),
                      str(b.level), _when(b.expires), b.reason, now)
    _tidy(table)
    out.print(table if result.blocked else table.title, highlight=False)
    gone = Table("network", "blocked at (UTC)", "score", "level", "reason",
                 title=f"would not have been blocked: {len(result.not_blocked)}")
    for a in result.not_blocked:
        gone.add_row(a.network, _when(a.created), f"{a.score:g}", str(a.level), a.reason)
    _tidy(gone)
    out.print(gone if result.not_blocked else gone.title, highlight=False)
