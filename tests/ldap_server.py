"""A directory server for tests: Debian's slapd on a loopback port, mdb backend in a temporary
directory, its own slapd.conf (no cn=config, nothing of the system's touched).

    with run_slapd(tmp, [("jane", "jane@example.org", ["j.doe@example.org"])]) as ldap:
        ldap.url            # "ldap://127.0.0.1:PORT"
        ldap.base, ldap.bind_dn, ldap.password

Entries are inetOrgPerson with `mail`, plus misc.schema's `mailLocalAddress` for aliases,
loaded with ldapadd. Readiness is polled with ldapwhoami, never slept for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

SLAPD = os.environ.get("FLOODGATE_SLAPD", "/usr/sbin/slapd")
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")
STARTUP_TIMEOUT = 30.0
BASE = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{BASE}"
PASSWORD = "secret"


@dataclass(frozen=True)
class Slapd:
    url: str
    base: str
    bind_dn: str
    password: str


def _conf(tmp: Path) -> str:
    includes = "\n".join(f"include {SCHEMA / s}.schema"
                         for s in ("core", "cosine", "inetorgperson", "misc"))
    return f"""{includes}
pidfile {tmp / "slapd.pid"}
argsfile {tmp / "slapd.args"}
modulepath {MODULES}
moduleload back_mdb
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "{ROOT_DN}"
rootpw {PASSWORD}
directory {tmp / "db"}
index mail eq
index mailLocalAddress eq
"""


def _ldif(users: Iterable[tuple[str, str, list[str]]]) -> str:
    out = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
           "o: Example\n",
           f"dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n"]
    for uid, mail, aliases in users:
        lines = [f"dn: uid={uid},ou=people,{BASE}", "objectClass: inetOrgPerson",
                 "objectClass: inetLocalMailRecipient", f"uid: {uid}", f"cn: {uid}",
                 f"sn: {uid}", f"mail: {mail}"]
        lines += [f"mailLocalAddress: {a}" for a in aliases]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _ready(url: str) -> bool:
    probe = subprocess.run(["ldapwhoami", "-x", "-H", url, "-D", ROOT_DN, "-w", PASSWORD],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


@contextlib.contextmanager
def run_slapd(tmp: Path, users: Iterable[tuple[str, str, list[str]]]) -> Iterator[Slapd]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db").mkdir(exist_ok=True)
    conf = tmp / "slapd.conf"
    conf.write_text(_conf(tmp))
    url = f"ldap://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([SLAPD, "-f", str(conf), "-h", url + "/", "-d", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not answer in time")
            time.sleep(0.02)  # polling readiness, not waiting for it
        subprocess.run(["ldapadd", "-x", "-H", url, "-D", ROOT_DN, "-w", PASSWORD],
                       input=_ldif(users).encode(), check=True, capture_output=True,
                       timeout=30)
        yield Slapd(url, f"ou=people,{BASE}", ROOT_DN, PASSWORD)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
