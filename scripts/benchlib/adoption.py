"""Scenario 12, Floodgate beside an existing Postfix (issue #21): the same traffic against
the reference peer (Postfix + amavisd-new + ClamAV + SpamAssassin, scripts/benchlib/peers.py)
and against a second Postfix with the peer's own configuration, its content filter removed,
asking `floodgate policy` (check_policy_service) and `floodgate milter` (smtpd_milters) on
their own clamd and spamd. Both run in the peers' network namespace, one under load at a time.

    ip netns exec peers python -m scripts.benchlib.adoption --workdir DIR [--quick]

(scenario_12 below runs it so, and turns DIR/adoption.json into rows.)

Two phases, closed loop at the peer README's concurrency (20 sessions in flight), one
connection per message:
* worm copies (scenario 4's worm zip, with the peer's ClamAV marker too) to valid users. A
  copy is *disposed of* when the stack is done with it for good: refused in the session
  (Floodgate's milter answers 554 at end of DATA), or accepted and then discarded by the
  content filter (amavis logs it Blocked; Postfix's queue is empty). The rate is copies
  disposed of over the time from the first session until the last copy was disposed of, so
  amavis' after-queue work counts, as it must: until then the copy is on the relay's disk.
  The Floodgate side is measured twice: with Postfix's default in_flow_delay (1 s, the peer's
  too) and with in_flow_delay = 0. Postfix's inflow control hands each new message a token
  that only the queue manager gives back; a copy the milter refuses never reaches the queue
  manager, so once the first ~100 tokens are spent every new message waits 1 s before its
  queue file is opened (seen as a 1 s pause after RCPT).
* clean mail (about 3 KB of unique text) to valid users: end to end from the start of its
  SMTP session to its arrival at the timestamping next hop (stampsink.py); throughput is
  messages over the time until the last one arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.benchlib import loadgen as lg
from scripts.benchlib.outbreak import (
    LEGIT_SOURCES,
    USERS,
    WORM_SOURCES,
    legit_message,
    user,
    worm_copies,
)
from scripts.benchlib.services import FLOODGATE, PY, ROOT, free_port, relay_config, wait_port
from scripts.benchlib.services import stop as stop_process

CONCURRENCY = 20  # the peer README's load
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


@dataclass(frozen=True)
class Sizes:
    worms: int = 400
    clean: int = 200
    warm_clean: int = 12
    warm_worms: int = 8


@dataclass
class Stack:
    name: str
    port: int
    queue_dir: Path
    filtered: Callable[[], int] | None = None  # messages its content filter has finished
    conf: Path | None = None  # its Postfix configuration directory, if ours to change

    def postconf(self, *settings: str) -> None:
        """Change the Postfix's main.cf and reload it."""
        assert self.conf is not None
        subprocess.run(["postconf", "-c", str(self.conf), "-e", *settings], check=True)
        subprocess.run(["postfix", "-c", str(self.conf), "reload"], check=True,
                       capture_output=True)

    def queued(self) -> int:
        n = 0
        for q in _QUEUES:
            for _root, _dirs, files in os.walk(self.queue_dir / q):
                n += len(files)
        return n


@dataclass
class Phase:
    codes: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    first_error: str = ""
    starts: dict[str, float] = field(default_factory=dict)


class Stamps:
    """The arrivals file the stampsink appends to, read incrementally."""

    def __init__(self, path: Path):
        self.path = path
        self.arrived: dict[str, float] = {}
        self._offset = 0

    def read(self) -> dict[str, float]:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            seq, stamp, *_ = line.split()
            self.arrived.setdefault(seq.decode(), float(stamp))
        return self.arrived


async def _closed_loop(stack: Stack, jobs: list[tuple[str, list[lg.Step], str]]) -> Phase:
    """Every job (seq, steps, source) in turn, CONCURRENCY sessions in flight."""
    phase = Phase()
    todo = iter(jobs)

    async def worker() -> None:
        for seq, steps, source in todo:
            phase.starts[seq] = time.monotonic()
            try:
                codes, _ = await lg.session("127.0.0.1", stack.port, steps, source,
                                            timeout=600)
            except (OSError, lg.SessionError, TimeoutError) as e:
                phase.errors += 1
                phase.first_error = phase.first_error or f"{type(e).__name__}: {e}"[:160]
                continue
            code = str(codes[5]) if len(codes) > 5 else str(codes[-1] if codes else None)
            phase.codes[code] = phase.codes.get(code, 0) + 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return phase


def _wait(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _worm_jobs(label: str, worms: list[bytes], n: int) -> list[tuple[str, list[lg.Step], str]]:
    out = []
    for k in range(n):
        seq = f"{label}-worm-{k}"
        wire = f"X-Bench-Seq: {seq}\r\n".encode() + worms[k % len(worms)]
        out.append((seq, lg.mail_steps(user(k), wire, sender=f"u{k}@infected.example",
                                       expect=None), WORM_SOURCES[k % len(WORM_SOURCES)]))
    return out


def _clean_jobs(label: str, n: int) -> list[tuple[str, list[lg.Step], str]]:
    out = []
    for k in range(n):
        seq, rcpt = f"{label}-clean-{k}", user(k * 7)
        out.append((seq, lg.mail_steps(rcpt, lg.to_wire(legit_message(seq, k, rcpt)),
                                       sender=f"carol{k % 50}@partner.example", expect=None),
                    LEGIT_SOURCES[k % len(LEGIT_SOURCES)]))
    return out


def _pct(values: list[float], p: float) -> float | None:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))] if s else None


def worm_phase(stack: Stack, stamps: Stamps, worms: list[bytes], n: int) -> dict[str, Any]:
    import uvloop

    filtered0 = stack.filtered() if stack.filtered else 0
    t0 = time.monotonic()
    phase = uvloop.run(_closed_loop(stack, _worm_jobs(stack.name, worms, n)))
    smtp_done = time.monotonic()
    accepted = phase.codes.get("250", 0)

    def disposed() -> bool:
        if stack.queued():
            return False
        return not stack.filtered or stack.filtered() - filtered0 >= accepted

    drained = _wait(disposed, 600)
    end = time.monotonic()
    arrived = stamps.read()
    delivered = sum(1 for s in phase.starts if s in arrived)
    refused = sum(v for c, v in phase.codes.items() if c[:1] in "45")
    return {"sent": n, "codes": phase.codes, "errors": phase.errors,
            "first_error": phase.first_error, "accepted": accepted, "refused": refused,
            "delivered": delivered, "drained": drained,
            "filtered": (stack.filtered() - filtered0) if stack.filtered else None,
            "smtp_seconds": round(smtp_done - t0, 3), "seconds": round(end - t0, 3),
            "disposed_per_s": round((n - delivered - phase.errors) / (end - t0), 2)}


def clean_phase(stack: Stack, stamps: Stamps, n: int) -> dict[str, Any]:
    import uvloop

    jobs = _clean_jobs(stack.name, n)
    t0 = time.monotonic()
    phase = uvloop.run(_closed_loop(stack, jobs))
    smtp_done = time.monotonic()
    seqs = [seq for seq, _, _ in jobs]
    _wait(lambda: all(s in stamps.read() for s in seqs), 600, 0.1)
    arrived = stamps.read()
    lat = [arrived[s] - phase.starts[s] for s in seqs if s in arrived]
    last = max((arrived[s] for s in seqs if s in arrived), default=time.monotonic())
    return {"sent": n, "codes": phase.codes, "errors": phase.errors,
            "first_error": phase.first_error, "arrived": len(lat),
            "smtp_seconds": round(smtp_done - t0, 3), "seconds": round(last - t0, 3),
            "per_s": round(len(lat) / (last - t0), 2),
            "e2e_p50": _pct(lat, 0.5), "e2e_p99": _pct(lat, 0.99)}


def warm_up(stack: Stack, stamps: Stamps, worms: list[bytes], sizes: Sizes) -> None:
    """A few of each first: every amavis and spamd child has its rules loaded."""
    worm_phase(Stack(stack.name + "-warm", stack.port, stack.queue_dir, stack.filtered),
               stamps, worms, sizes.warm_worms)
    got = clean_phase(Stack(stack.name + "-warm", stack.port, stack.queue_dir, stack.filtered),
                      stamps, sizes.warm_clean)
    if got["arrived"] != sizes.warm_clean:
        raise RuntimeError(f"{stack.name} warm-up: {got}")


# -- the stacks ---------------------------------------------------------------------------

@contextlib.contextmanager
def peer_stack(sink_port: int) -> Iterator[Stack]:
    """The running peer (setup.sh, run by scenario_12 before this process), delivering to
    the timestamping sink."""
    from scripts.benchlib.peers import Postfix

    pf = Postfix()
    pf.next_hop(sink_port)
    try:
        yield Stack("peer", pf.port, pf.queue_dir, pf.filtered)
    finally:
        pf.purge()
        pf.restore()


def _master_cf(peer: str, port: int) -> str:
    """The peer's master.cf without amavis' two services (its transport and the
    re-injection smtpd), the public smtpd on `port`."""
    from scripts.benchlib.peers import SMTP_PORT

    out: list[str] = []
    skipping = False
    for line in peer.splitlines():
        if line[:1] in (" ", "\t"):
            if not skipping:
                out.append(line)
            continue
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        skipping = first == "amavis" or (first.startswith("127.0.0.1:")
                                         and first != f"127.0.0.1:{SMTP_PORT}")
        if first == f"127.0.0.1:{SMTP_PORT}":
            line = line.replace(first, f"127.0.0.1:{port}", 1)
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def adopted_postfix(work: Path, sink_port: int, policy_port: int, milter_port: int) -> Path:
    """The peer's Postfix configuration in a directory of its own: content_filter removed,
    the README's "Beside an existing Postfix" settings added (policy + milter)."""
    from scripts.benchlib.peers import RUN

    peer = RUN / "postfix"
    # under /tmp as the peer's: Postfix's daemons (user postfix) must reach the directory
    base = Path(tempfile.mkdtemp(prefix="floodgate-bench-postfix-"))
    (work / "postfix-dir.txt").write_text(f"{base}\n")
    conf = base / "conf"
    conf.mkdir(parents=True)
    base.chmod(0o755)
    (base / "spool").mkdir()  # `postfix start` makes its queue directories in it
    (base / "data").mkdir()
    shutil.chown(base / "data", "postfix", "postfix")
    for m in ("relay_recipients", "virtual"):
        shutil.copy(peer / m, conf / m)
    (conf / "transport").write_text(f"example.org smtp:[127.0.0.1]:{sink_port}\n")
    (conf / "master.cf").write_text(_master_cf((peer / "master.cf").read_text(),
                                               free_port()))
    shutil.copy(peer / "main.cf", conf / "main.cf")
    hop = f"smtp:[127.0.0.1]:{sink_port}"
    policy = f"check_policy_service inet:127.0.0.1:{policy_port}"
    settings = [
        f"queue_directory = {base / 'spool'}", f"data_directory = {base / 'data'}",
        f"maillog_file_prefixes = {base}", f"maillog_file = {base / 'postfix.log'}",
        f"relay_recipient_maps = hash:{conf / 'relay_recipients'}",
        f"virtual_alias_maps = hash:{conf / 'virtual'}",
        f"transport_maps = hash:{conf / 'transport'}",
        f"default_transport = {hop}", f"relay_transport = {hop}",
        "content_filter =",
        # README "Beside an existing Postfix"
        "smtpd_delay_reject = no",
        f"smtpd_client_restrictions = {policy}",
        f"smtpd_relay_restrictions = {policy}, reject_unauth_destination",
        f"smtpd_milters = inet:127.0.0.1:{milter_port}",
        "milter_default_action = tempfail"]
    subprocess.run(["postconf", "-c", str(conf), "-e", *settings], check=True)
    subprocess.run(["postconf", "-c", str(conf), "-X", "amavis_destination_concurrency_limit",
                    "amavis_destination_recipient_limit"], check=True)
    for m in ("relay_recipients", "virtual", "transport"):
        subprocess.run(["postmap", "-c", str(conf), f"hash:{conf / m}"], check=True)
    return conf


def _listen_port(conf: Path) -> int:
    for line in (conf / "master.cf").read_text().splitlines():
        if line.startswith("127.0.0.1:") and " inet " in line:
            return int(line.split()[0].split(":")[1])
    raise RuntimeError(f"no smtpd in {conf / 'master.cf'}")


@contextlib.contextmanager
def adopted_stack(work: Path, sink_port: int) -> Iterator[Stack]:
    """Postfix like the peer's + `floodgate policy` + `floodgate milter`, on a store with the
    peer's 772 users as aliases and their own clamd and spamd (as scenario 9's relay)."""
    from tests.services import run_clamd, run_spamd

    fg = work / "floodgate"
    fg.mkdir(parents=True, exist_ok=True)
    aliases = fg / "aliases.txt"
    aliases.write_text("".join(f"{user(i)} {user(i)}\n" for i in range(USERS)))
    policy_port, milter_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    conf: Path | None = None
    with run_clamd(fg / "clamd", stream_max_length="30M", max_threads=4) as clamd, \
            run_spamd(fg / "spamd", max_children=2) as spamd:
        config = relay_config(fg / "relay.toml", port=free_port(), workdir=fg,
                              clamd=clamd.address, spamd=spamd.address)
        subprocess.run([*FLOODGATE, "-c", str(config), "aliases", "import", str(aliases),
                        "--format", "postfix"], cwd=ROOT, check=True, capture_output=True)
        try:
            for kind, port in (("policy", policy_port), ("milter", milter_port)):
                log = fg / f"{kind}.log"
                with open(log, "ab") as out:
                    procs.append(subprocess.Popen(
                        [*FLOODGATE, "-c", str(config), kind, "--listen",
                         f"127.0.0.1:{port}"], cwd=ROOT, stdout=out,
                        stderr=subprocess.STDOUT))
                wait_port(port, procs[-1], log)
            conf = adopted_postfix(work, sink_port, policy_port, milter_port)
            started = subprocess.run(["postfix", "-c", str(conf), "start"],
                                     capture_output=True, text=True)
            if started.returncode != 0:
                raise RuntimeError(f"postfix start: {started.stdout}{started.stderr}")
            port = _listen_port(conf)
            _wait(lambda: _port_open(port), 30)
            yield Stack("adopted", port, conf.parent / "spool", conf=conf)
        finally:
            if conf is not None:
                subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True)
                with contextlib.suppress(OSError):  # its log, before the directory goes
                    shutil.copy(conf.parent / "postfix.log", work / "adopted-postfix.log")
                shutil.rmtree(conf.parent, ignore_errors=True)
            for p in procs:
                stop_process(p)


def _port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="100 worm copies, 60 clean messages")
    ap.add_argument("--stacks", default="peer,adopted", help="both, or one (trying things)")
    ap.add_argument("--worms", type=int, default=0, help="worm copies (default 400, quick 100)")
    ap.add_argument("--clean", type=int, default=0, help="clean messages (200, quick 60)")
    args = ap.parse_args()
    sizes = Sizes(worms=100, clean=60) if args.quick else Sizes()
    sizes = Sizes(worms=args.worms or sizes.worms, clean=args.clean or sizes.clean)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    stamps_path = work / "arrivals.txt"
    stamps_path.touch()
    stamps = Stamps(stamps_path)
    sink_port = free_port()
    log = work / "stampsink.log"
    with open(log, "ab") as out:
        sink = subprocess.Popen([PY, "-m", "scripts.benchlib.stampsink", "--port",
                                 str(sink_port), "--out", str(stamps_path)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"sizes": sizes.__dict__, "concurrency": CONCURRENCY,
                              "stacks": {}}
    try:
        wait_port(sink_port, sink, log)
        worms = worm_copies(50)
        result["worm_bytes"] = len(worms[0])
        with contextlib.ExitStack() as running:
            stacks = [running.enter_context(peer_stack(sink_port) if name == "peer"
                                            else adopted_stack(work, sink_port))
                      for name in args.stacks.split(",")]
            for st in stacks:
                print(f"  scenario 12: {st.name} warm-up", flush=True)
                warm_up(st, stamps, worms, sizes)
                result["stacks"][st.name] = {"load_average": round(os.getloadavg()[0], 2)}
            out = result["stacks"]

            def measure(st: Stack, kind: str, fn: Callable[[], dict[str, Any]]) -> None:
                print(f"  scenario 12: {st.name} {kind}", flush=True)
                got = fn()
                got["load_average"] = round(os.getloadavg()[0], 2)
                print(f"    {json.dumps(got)}", flush=True)
                out[st.name][kind] = got

            for st in stacks:
                measure(st, "worm", lambda st=st: worm_phase(st, stamps, worms, sizes.worms))
            for st in stacks:
                if st.conf is None:
                    continue
                # Postfix's inflow control: each message opened takes a token that only the
                # queue manager gives back; a copy the milter refuses never reaches it, so
                # once the first ~100 tokens are gone each new message waits in_flow_delay
                # (1 s by default, the peer's too) before its queue file is opened.
                st.postconf("in_flow_delay = 0")
                measure(st, "worm_no_inflow_delay",
                        lambda st=st: worm_phase(st, stamps, worms, sizes.worms))
                st.postconf("in_flow_delay = 1s")
            for st in stacks[::-1]:  # the other order: a slow minute hits both
                measure(st, "clean", lambda st=st: clean_phase(st, stamps, sizes.clean))
    except Exception as e:
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        stop_process(sink)
        (work / "adoption.json").write_text(json.dumps(result, indent=1, default=str))


# -- the rows -------------------------------------------------------------------------------

def scenario_12(s: Any) -> list[Any]:
    """Run the module in the peers' namespace around a fresh peer stack; the peer's figures
    are the baseline column."""
    from scripts.benchlib import peers
    from scripts.benchlib.scenarios import Row, _ratio

    title = "12 beside Postfix"
    why = peers.available()
    if why:
        return [Row(title, "Postfix + policy + milter against Postfix + amavisd-new",
                    "not measured", note=why)]
    work = s.workdir / "s12"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "peers.log"
    print("  scenario 12: setting up the peer stack (Postfix + amavisd-new)", flush=True)
    try:
        peers.setup(log)
        cmd = ["ip", "netns", "exec", peers.NETNS, PY, "-m", "scripts.benchlib.adoption",
               "--workdir", str(work), *(["--quick"] if s.quick else [])]
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=1800)
    finally:
        peers.stop(log)
    data = json.loads((work / "adoption.json").read_text())
    if "error" in data:
        return [Row(title, "adoption run", "error", note=data["error"][:200])]
    p, f = data["stacks"]["peer"], data["stacks"]["adopted"]
    pw, fw, pc, fc = p["worm"], f["worm"], p["clean"], f["clean"]

    def codes(x: dict[str, Any]) -> str:
        return ", ".join(f"{n} x {c}" for c, n in sorted(x["codes"].items()))

    rows = []
    for fw_, setting in ((fw, "Postfix's default in_flow_delay = 1s, as the peer's"),
                         (f["worm_no_inflow_delay"], "in_flow_delay = 0")):
        ratio = fw_["disposed_per_s"] / pw["disposed_per_s"] if pw["disposed_per_s"] else 0
        rows.append(Row(
            title, f"{fw_['sent']} worm copies ({data['worm_bytes']:,} bytes), {CONCURRENCY} "
            "sessions in flight: copies disposed of per second (Postfix + Floodgate policy + "
            f"milter, {setting}; baseline Postfix + amavisd-new)",
            f"{fw_['disposed_per_s']:,.1f}/s", f"{pw['disposed_per_s']:,.1f}/s",
            _ratio(fw_["disposed_per_s"], pw["disposed_per_s"]), ">= 10x", ratio >= 10,
            "disposed of = refused in the session, or accepted and then discarded by amavis "
            "with Postfix's queue empty; time from the first session to the last disposal. "
            f"Floodgate: {codes(fw_)} at end of DATA in {fw_['seconds']:.2f} s; amavis: "
            f"{codes(pw)}, SMTP done in {pw['smtp_seconds']:.2f} s, last discarded at "
            f"{pw['seconds']:.2f} s; delivered {fw_['delivered']} / {pw['delivered']}; load "
            f"average {pw['load_average']:.1f} / {fw_['load_average']:.1f}; machine shared "
            "with other engineers' test runs"))
    rows.append(Row(
        title, f"{fc['sent']} clean messages (3 KB), {CONCURRENCY} sessions in flight: end to "
        "end p50 / p99 and throughput (SMTP start to arrival at the next hop)",
        f"{fc['e2e_p50']:.2f} s / {fc['e2e_p99']:.2f} s; {fc['per_s']:.1f} msgs/s",
        f"{pc['e2e_p50']:.2f} s / {pc['e2e_p99']:.2f} s; {pc['per_s']:.1f} msgs/s",
        f"p99 {_ratio(fc['e2e_p99'], pc['e2e_p99'])}, throughput "
        f"{_ratio(fc['per_s'], pc['per_s'])}", "", None,
        f"arrived {fc['arrived']} / {pc['arrived']} of {fc['sent']}; codes {codes(fc)} / "
        f"{codes(pc)}; load average {pc['load_average']:.1f} / {fc['load_average']:.1f}"))
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
