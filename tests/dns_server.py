"""An authoritative DNS server for tests: Debian's nsd on a loopback port.

Mail authentication (SPF, DKIM, DMARC, ARC) is DNS from end to end, so its tests ask a real
name server, not a stubbed resolver: nsd serves the zones a test writes, over UDP and TCP,
with real NXDOMAIN and NODATA answers. A server that times out is a fault nsd will not make on
demand, so `silent_nameserver()` is a bound socket that reads queries and never answers.

    with run_nsd(tmp, {"example.test": ['@ TXT "v=spf1 ip4:192.0.2.1 -all"']}) as dns:
        resolver = dns.resolver()   # a dnspython async resolver asking only this server
        dns.nameserver              # "127.0.0.1:PORT", the form [auth] nameserver takes

Readiness is polled with a real query for each zone's SOA, never slept for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

NSD = os.environ.get("FLOODGATE_NSD", "/usr/sbin/nsd")
STARTUP_TIMEOUT = 30.0


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (nsd binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def zone_text(origin: str, records: Iterable[str], ttl: int = 300) -> str:
    """A zone file: SOA and NS for `origin`, then the test's records (zone-file syntax,
    names relative to the origin unless they end in a dot)."""
    origin = origin.rstrip(".") + "."
    below = "" if origin == "." else origin  # the root zone ".": its server is "ns."
    head = [
        f"$ORIGIN {origin}",
        f"$TTL {ttl}",
        f"@ IN SOA ns.{below} hostmaster.{below} 1 3600 600 86400 {ttl}",
        f"@ IN NS ns.{below}",
        "ns IN A 127.0.0.1",
    ]
    return "\n".join([*head, *records]) + "\n"


@dataclass
class NameServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def resolver(self, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [self.host]
        r.port = self.port
        r.lifetime = timeout
        r.timeout = timeout
        return r

    def query(self, name: str, rdtype: str = "TXT") -> dns.message.Message:
        """A synchronous query, for tests that check what the server serves."""
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        return dns.query.udp(q, self.host, port=self.port, timeout=2.0)


def _file(zone: str) -> str:
    """The zone's file name; the root zone "." (a test serving every name) is root.zone."""
    return "root.zone" if zone == "." else f"{zone}.zone"


def _config(directory: Path, port: int, zones: Mapping[str, str]) -> str:
    lines = [
        "server:",
        f"    ip-address: 127.0.0.1@{port}",
        "    do-ip6: no",
        '    username: ""',
        '    chroot: ""',
        f'    zonesdir: "{directory}"',
        f'    pidfile: "{directory}/nsd.pid"',
        f'    xfrdfile: "{directory}/xfrd.state"',
        f'    zonelistfile: "{directory}/zone.list"',
        '    database: ""',
        "    server-count: 1",
        "    verbosity: 1",
        f'    logfile: "{directory}/nsd.log"',
        "remote-control:",
        "    control-enable: no",
    ]
    for name in zones:
        lines += ["zone:", f"    name: {name}", f'    zonefile: "{_file(name)}"']
    return "\n".join(lines) + "\n"


def _serves(host: str, port: int, zone: str) -> bool:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), host, port=port,
                               timeout=0.5)
    except (OSError, dns.exception.Timeout):
        return False
    return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)


@contextlib.contextmanager
def run_nsd(directory: Path, zones: Mapping[str, Iterable[str] | str],
            ttl: int = 300) -> Iterator[NameServer]:
    """Serve `zones` ({origin: records or whole zone text}) from a private nsd."""
    directory = Path(directory) / "nsd"
    directory.mkdir(parents=True, exist_ok=True)
    texts = {(name.rstrip(".") or "."):
             (body if isinstance(body, str) else zone_text(name, body, ttl))
             for name, body in zones.items()}
    for name, text in texts.items():
        (directory / _file(name)).write_text(text)
    port = _free_port()
    conf = directory / "nsd.conf"
    conf.write_text(_config(directory, port, texts))
    check = subprocess.run(["/usr/sbin/nsd-checkconf", str(conf)], capture_output=True,
                           text=True)
    if check.returncode:
        raise RuntimeError(f"nsd.conf refused: {check.stderr or check.stdout}")
    proc = subprocess.Popen([NSD, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    server = NameServer("127.0.0.1", port, proc, directory)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = set(texts)
        while pending:
            if proc.poll() is not None:
                log = (directory / "nsd.log")
                raise RuntimeError("nsd exited: " + (proc.stderr.read() or b"").decode()
                                   + (log.read_text() if log.exists() else ""))
            if time.monotonic() > deadline:
                raise RuntimeError(f"nsd did not serve {sorted(pending)} in time")
            pending = {z for z in pending if not _serves("127.0.0.1", port, z)}
            if pending:
                time.sleep(0.05)  # polling nsd's start-up, not synchronising a test
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def silent_nameserver() -> Iterator[str]:
    """A "127.0.0.1:PORT" where a UDP socket is bound and never answers: every query to
    it times out, as a dead or overloaded name server does."""
    port = _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))
        tcp.listen(16)
        yield f"127.0.0.1:{port}"
