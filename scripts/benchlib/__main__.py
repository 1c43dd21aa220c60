"""`scripts/bench [--quick] [--only 1,2] [--no-readme]`: run the scenarios, print the table,
write it into README.md between the bench markers, and keep the raw rows as JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from scripts.benchlib import adoption, auth_scenario, greylist_cost, trace_scale, verification
from scripts.benchlib import scenarios as sc
from scripts.benchlib.services import ROOT

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ALL = "1,2,3,4,5,6,7,8,9,10,11,12,13,14"


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average at the start "
            f"{load[0]:.1f} (the host is shared with other machines)")


def table(rows: list[sc.Row]) -> str:
    out = ["| # | measurement | result | baseline (same run) | ratio | target | met | notes |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        out.append(f"| {r.scenario} | {r.measurement} | {r.value} | {r.baseline} | {r.ratio} "
                   f"| {r.target} | {met} | {r.note} |")
    return "\n".join(out)


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    a, b = content.index(START) + len(START), content.index(END)
    readme.write_text(content[:a] + "\n" + text.strip() + "\n" + content[b:])


def _prune(workdir: Path) -> None:
    """Drop the bulky leftovers (10M-event databases, 20 MB spool files, delivered copies);
    logs and results.json stay."""
    for path in workdir.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_size > 1_000_000 and not path.name.endswith(
                    (".log", ".json", ".out")):
                path.unlink()


def _earlier_rows(current: Path, only: set[str]) -> list[sc.Row]:
    """For each scenario not in `only`, its rows from the newest earlier results.json."""
    found: dict[str, list[sc.Row]] = {}
    for path in sorted((ROOT / "var" / "bench").glob("*/results.json"), reverse=True):
        if path.parent == current:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        these: dict[str, list[sc.Row]] = {}
        for raw in data.get("rows", []):
            row = sc.Row(**raw)
            these.setdefault(row.scenario.split()[0], []).append(row)
        for key, rows in these.items():
            if key not in only and key not in found and rows[0].value != "error":
                found[key] = rows
    return [r for rows in found.values() for r in rows]


def _order(row: sc.Row) -> tuple[int, str]:
    """Scenarios in numeric order (12 after 9, not after 1)."""
    key = row.scenario.split()[0]
    return (int(key) if key.isdigit() else 10**6, key)


def revision() -> str:
    """The commit measured, and whether code was changed on top of it (README.md, which
    the bench itself rewrites, does not count)."""
    def git(*args: str) -> str:  # not stripped: a status line starts with a space
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines() if line[3:] != "README.md"]
    rev = git("rev-parse", "--short", "HEAD").strip()
    return f"{rev} plus uncommitted changes to {', '.join(changed)}" if changed else rev


def main() -> None:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter runs, 1M-event report")
    ap.add_argument("--only", default=ALL, help="scenarios, e.g. 1,2")
    ap.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    ap.add_argument("--notes", type=Path, default=Path(__file__).with_name("analysis.md"),
                    help="markdown appended under the table (default: benchlib/analysis.md)")
    args = ap.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    # SIGTERM unwinds like Ctrl-C, so every relay, clamd and spamd started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # scenario 6: 5,000 + 5,000 fds
    stamp = datetime.now(UTC)
    rev = revision()  # what is measured: taken before the run, which may take a while
    workdir = ROOT / "var" / "bench" / stamp.strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = sc.Settings(workdir, args.quick)
    desc = machine()
    print(f"bench: {desc}\nbench: work directory {workdir}", flush=True)
    rows: list[sc.Row] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        scanners = None
        if only & {"3", "4", "5", "8"}:
            from tests.services import run_clamd, run_spamd

            clamd = stack.enter_context(run_clamd(workdir / "clamd", stream_max_length="30M",
                                                  max_threads=4))
            spamd = stack.enter_context(run_spamd(workdir / "spamd", max_children=2))
            scanners = (clamd, spamd)
        steps = [("1", lambda: sc.scenario_1_2(settings, "1")),
                 ("2", lambda: sc.scenario_1_2(settings, "2")),
                 ("3", lambda: sc.scenario_3(settings, scanners)),
                 ("4", lambda: sc.scenario_4(settings, scanners)),
                 ("5", lambda: sc.scenario_5(settings, scanners)),
                 ("6", lambda: sc.scenario_6(settings)),
                 ("7", lambda: sc.scenario_7(settings)),
                 ("8", lambda: sc.scenario_8(settings, scanners)),
                 ("9", lambda: sc.scenario_9(settings)),
                 ("10", lambda: trace_scale.scenario_10(settings)),
                 ("11", lambda: auth_scenario.scenario_11(settings)),
                 ("12", lambda: adoption.scenario_12(settings)),
                 ("13", lambda: verification.scenario_13(settings)),
                 ("14", lambda: greylist_cost.scenario_14(settings))]
        for key, fn in steps:
            if key not in only:
                continue
            t0 = time.monotonic()
            print(f"bench: scenario {key}", flush=True)
            try:
                new = fn()
            except Exception as e:  # one broken scenario must not cost the others
                import traceback

                traceback.print_exc()
                new = [sc.Row(f"{key}", "scenario failed", "error", note=str(e)[:200])]
            rows.extend(new)
            for r in new:
                print(f"    {r.measurement}: {r.value}  [{r.baseline} {r.ratio}] "
                      f"{r.target} {'' if r.met is None else ('MET' if r.met else 'MISSED')}"
                      f" {r.note}", flush=True)
            print(f"bench: scenario {key} took {time.monotonic() - t0:.0f}s", flush=True)
    elapsed = time.monotonic() - started
    _prune(workdir)
    text = table(rows)
    print("\n" + text)
    (workdir / "results.json").write_text(json.dumps(
        {"date": stamp.isoformat(), "machine": desc, "commit": rev, "quick": args.quick,
         "rows": [asdict(r) for r in rows]}, indent=1))
    if args.no_readme:
        return
    head = (f"Measured by `scripts/bench{' --quick' if args.quick else ''}"
            f"{'' if only == set(ALL.split(',')) else ' --only ' + args.only}` on "
            f"{stamp:%Y-%m-%d %H:%M} UTC (commit {rev}), in "
            f"{elapsed / 60:.0f} min, on {desc}. Every figure is set against a baseline "
            "measured in the same run: absolute numbers on a shared two-core machine mean "
            "little. Load: an asyncio generator (one process, uvloop) on the same machine, "
            "sessions from 250 source addresses in 127.10.0.0/16, 32 sessions in flight "
            "(scenarios 1-2; every variant running at once and measured in turn, "
            f"{sc.ROUNDS} rounds of {settings.seconds / 2:g} s each). Relays use the demo "
            "configuration with their own port, store and spool, `[scoring] enabled = "
            "false` (scoring would block the generator's addresses) and `[blocklist] "
            "protect_loopback = false` (scenario 2 blocks "
            f"`{sc.BLOCKED_NET}` with `floodgate block add`).\n\n")
    if only != set(ALL.split(",")):  # the other scenarios' rows from the last run that had them
        earlier = _earlier_rows(workdir, only)
        if earlier:
            rows = sorted([*rows, *earlier], key=_order)
            text = table(rows)
            head += ("Rows of scenarios not in this run come from the latest earlier run "
                     "that measured them (dates in `var/bench/*/results.json`).\n\n")
    notes = args.notes.read_text() if args.notes and args.notes.exists() else ""
    write_readme(head + text + ("\n\n" + notes.strip() if notes else ""))
    print(f"bench: README.md updated; rows in {workdir / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
