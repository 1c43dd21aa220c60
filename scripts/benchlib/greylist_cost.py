"""Scenario 14: what greylisting costs. Two relays started together, identical but for
`[greylist] enabled`, measured in interleaved rounds in the same run:

- clean mail (a 3 kB message to a known recipient, accepted and spooled) from hosts with good
  history: their /24s passed greylisting before (rows in greylist_hosts written before the
  relay starts), so after the warm-up's one store lookup per host the check is an in-memory
  look-up. The target: no measurable cost (>= 0.95x; the rounds' spread on this shared
  host is a few percent).
- unknown hosts (no history, a fresh sender every session: each RCPT is a new triplet, one
  store transaction that inserts a row) against the same session on the relay without
  greylisting (EHLO, MAIL, RCPT to a known recipient, QUIT): the price of the 451 itself.
- a bot in one /24 with a fresh sender every attempt, its network past `max_pending`
  (reached in the first warm-up): greylisted without a new row.
"""

from __future__ import annotations

import contextlib
import itertools
from datetime import UTC, datetime, timedelta

from scripts.benchlib import loadgen as lg
from scripts.benchlib import scenarios as sc

GOOD_SOURCES = sc.GEN_SOURCES  # 127.10.0.0/24 and 127.10.1.0/24: good history
# never seen, one address in each of 250 /24s: every network stays under max_pending
UNKNOWN_SOURCES = [f"127.11.{n}.5" for n in range(250)]
BOT_SOURCES = lg.source_addresses(net=12, count=200)  # 127.12.0.0/24: one network, past it
FRESH = itertools.count()  # a sender never used before, across rounds
RCPT = "alice@example.org"  # in fixtures/aliases.txt
GREYLIST = """
[greylist]
enabled = true
delay = "5m"
"""


def _networks(sources: list[str]) -> set[str]:
    from relay.hosts.greylist import network_of

    return {network_of(a) for a in sources}


def _seed_good_history(url: str, networks: set[str]) -> None:
    """The networks passed greylisting before: what the auto-allowlist holds for them."""
    from relay.store.database import make_engine
    from relay.store.greylist_tables import GreylistHost

    engine = make_engine(url)
    expires = datetime.now(UTC) + timedelta(days=35)
    with engine.begin() as conn:
        conn.execute(GreylistHost.__table__.insert(),
                     [{"network": n, "expires": expires, "passes": 1} for n in networks])
    engine.dispose()


def _triplets(url: str, network: str | None = None) -> int:
    from sqlalchemy import func, select

    from relay.store.database import make_engine
    from relay.store.greylist_tables import GreylistTriplet

    engine = make_engine(url)
    with engine.connect() as conn:
        query = select(func.count()).select_from(GreylistTriplet)
        if network is not None:
            query = query.where(GreylistTriplet.network == network)
        n = conn.execute(query).scalar_one()
    engine.dispose()
    return n


def scenario_14(s: sc.Settings) -> list[sc.Row]:
    wire = [lg.to_wire(sc.clean_message(n)) for n in range(2000)]

    def clean(n: int) -> list[lg.Step]:
        return lg.mail_steps(RCPT, wire[n % len(wire)])

    def unknown(expect: int):  # type: ignore[no-untyped-def]
        def steps(n: int) -> list[lg.Step]:
            return [(None, 220), (b"EHLO mta%d.bot.invalid\r\n" % (n % 997), 250),
                    (b"MAIL FROM:<r%d@sender.invalid>\r\n" % next(FRESH), 250),
                    (f"RCPT TO:<{RCPT}>\r\n".encode(), expect), (b"QUIT\r\n", 221)]
        return steps

    parts: dict[str, list[tuple[lg.LoadResult, float]]] = {}
    with contextlib.ExitStack() as running:
        on_dir = s.workdir / "s14-on"
        on_dir.mkdir(parents=True, exist_ok=True)
        on_url = f"sqlite:///{on_dir / 'floodgate.db'}"
        # the schema comes from the CLI's first store use (the alias import), the seed after
        on = running.enter_context(sc.relay(s, "s14-on", extra=GREYLIST,
                                            setup=[sc.ALIASES]))
        _seed_good_history(on_url, _networks(GOOD_SOURCES))
        off = running.enter_context(sc.relay(s, "s14-off", setup=[sc.ALIASES]))
        targets = {
            "good history, greylisting off": (off, clean, GOOD_SOURCES),
            "good history, greylisting on": (on, clean, GOOD_SOURCES),
            "unknown hosts, greylisting off": (off, unknown(250), UNKNOWN_SOURCES),
            "unknown hosts, greylisting on": (on, unknown(451), UNKNOWN_SOURCES),
            "bot past max_pending, greylisting on": (on, unknown(451), BOT_SOURCES),
        }
        triplets_before = _triplets(on_url)
        for n in range(sc.ROUNDS):
            for key, (r, steps, sources) in targets.items():
                print(f"  scenario 14: {key} (round {n + 1} of {sc.ROUNDS})", flush=True)
                parts.setdefault(key, []).append(
                    sc._sessions(r.port, r.pids, steps, sources, s.seconds / 2))
        bot_rows = _triplets(on_url, "127.12.0.0/24")
        triplets = _triplets(on_url) - triplets_before - bot_rows
    res = {key: sc._merged(p) for key, p in parts.items()}
    title = "14 greylisting cost"
    (g_off, g_off_cpu), (g_on, g_on_cpu) = (res["good history, greylisting off"],
                                            res["good history, greylisting on"])
    (u_off, u_off_cpu), (u_on, u_on_cpu) = (res["unknown hosts, greylisting off"],
                                            res["unknown hosts, greylisting on"])
    bot, bot_cpu = res["bot past max_pending, greylisting on"]
    bot_sessions = sum(r.ok for r, _ in parts["bot past max_pending, greylisting on"])
    return [
        sc.Row(title, "clean mail, good history, greylisting off (msgs/s; p50 / p99)",
               f"{sc._fmt_rate(g_off.rate)}; {sc._ms(g_off.p50)} / {sc._ms(g_off.p99)}",
               note=f"relay CPU {g_off_cpu * 1e6:.0f} us/message; {g_off.errors} failed"),
        sc.Row(title, "clean mail, good history, greylisting on (msgs/s; p50 / p99)",
               f"{sc._fmt_rate(g_on.rate)}; {sc._ms(g_on.p50)} / {sc._ms(g_on.p99)}",
               sc._fmt_rate(g_off.rate), sc._ratio(g_on.rate, g_off.rate), ">= 0.95x",
               g_on.rate >= 0.95 * g_off.rate,
               f"relay CPU {g_on_cpu * 1e6:.0f} us/message; {g_on.errors} failed"),
        sc.Row(title, "unknown host to a known recipient, greylisting off: RCPT 250, QUIT "
               "(sessions/s; p50 / p99)",
               f"{sc._fmt_rate(u_off.rate)}; {sc._ms(u_off.p50)} / {sc._ms(u_off.p99)}",
               note=f"relay CPU {u_off_cpu * 1e6:.0f} us/session"),
        sc.Row(title, "unknown host, greylisting on: new triplet, RCPT 451 (sessions/s; "
               "p50 / p99)",
               f"{sc._fmt_rate(u_on.rate)}; {sc._ms(u_on.p50)} / {sc._ms(u_on.p99)}",
               sc._fmt_rate(u_off.rate), sc._ratio(u_on.rate, u_off.rate),
               note=f"relay CPU {u_on_cpu * 1e6:.0f} us/session; {triplets} triplet rows "
               "written in the rounds, warm-ups included (SQLite store)"),
        sc.Row(title, "bot in one /24, fresh sender each attempt, past max_pending: RCPT "
               "451, no row (sessions/s; p50 / p99)",
               f"{sc._fmt_rate(bot.rate)}; {sc._ms(bot.p50)} / {sc._ms(bot.p99)}",
               sc._fmt_rate(u_off.rate), sc._ratio(bot.rate, u_off.rate),
               note=f"relay CPU {bot_cpu * 1e6:.0f} us/session; the network holds {bot_rows} "
               f"triplet rows after {bot_sessions} measured sessions"),
    ]
