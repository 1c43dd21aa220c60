"""Scenario 13: the dictionary attack against a domain with recipient verification (its cache
warm) set against the same attack on an alias-table domain, one relay, the same run.

The verified domain's next hop is a real SMTP server (tests/sink.py, in this process) that
knows no one: every probe is answered 550. The attack cycles over WARM addresses, all probed
(and cached as unknown) before the measurement, so what is measured is the cache path: the
filter's alias-table miss, then the per-domain cache lookup. The bucket is set high so the
warm-up is not rate-limited; the probe count at the next hop shows nothing was probed during
the measurement.
"""

from __future__ import annotations

import contextlib

from scripts.benchlib import loadgen as lg
from scripts.benchlib import scenarios as sc

WARM = 1000  # distinct addresses the attack cycles over (all cached before measuring)
DOMAIN = "verify.bench.test"


def _verified_steps(n: int) -> list[lg.Step]:
    return lg.dictionary_steps(n % WARM, DOMAIN)


def scenario_13(s: sc.Settings) -> list[sc.Row]:
    from tests.sink import Sink

    sink = Sink()
    sink.users = set()  # nobody: every probe gets 550 5.1.1
    sink.up()
    extra = f"""
[domains."{DOMAIN}"]
next_hop = "{sink.hop}"
[domains."{DOMAIN}".verify]
smtp = true
rate = 100000
burst = 100000
negative_ttl = "1h"
timeout = "5s"
"""
    parts: dict[str, list[tuple[lg.LoadResult, float]]] = {}
    try:
        with contextlib.ExitStack() as running:
            r = running.enter_context(sc.relay(s, "s13", extra=extra))
            print("  scenario 13: warming the verification cache", flush=True)
            warm = sc.load(r.port, _verified_steps, concurrency=16, duration=600,
                           sources=sc.GEN_SOURCES, limit=WARM, warmup=0)
            probes_warm = len(sink.rcpts_seen())
            targets = {"alias table": lg.dictionary_steps, "verified, cache warm":
                       _verified_steps}
            for n in range(sc.ROUNDS):
                for key, steps in targets.items():
                    print(f"  scenario 13: {key} (round {n + 1} of {sc.ROUNDS})", flush=True)
                    parts.setdefault(key, []).append(
                        sc._sessions(r.port, r.pids, steps, sc.GEN_SOURCES, s.seconds / 2))
            probes_after = len(sink.rcpts_seen())
    finally:
        sink.down()
    results = {key: sc._merged(p) for key, p in parts.items()}
    table, table_cpu = results["alias table"]
    verified, verified_cpu = results["verified, cache warm"]
    title = "13 dictionary attack, recipient verification"
    return [
        sc.Row(title, "alias-table domain (sessions/s; p50 / p99)",
               f"{sc._fmt_rate(table.rate)}; {sc._ms(table.p50)} / {sc._ms(table.p99)}",
               note=f"relay CPU {table_cpu * 1e6:.0f} us/session"),
        sc.Row(title, "verified domain, cache warm (sessions/s; p50 / p99)",
               f"{sc._fmt_rate(verified.rate)}; {sc._ms(verified.p50)} / "
               f"{sc._ms(verified.p99)}",
               sc._fmt_rate(table.rate), sc._ratio(verified.rate, table.rate), ">= 0.8x",
               verified.rate >= 0.8 * table.rate,
               f"relay CPU {verified_cpu * 1e6:.0f} us/session; probes: {probes_warm} to "
               f"warm {warm.ok} sessions, {probes_after - probes_warm} while measuring"),
    ]
