"""The reference peer stack of scenario 9: the classic 2004 relay, Postfix + amavisd-new
(ClamAV, SpamAssassin), set up in network namespace `peers` by the shared scripts in
$FLOODGATE_PEERS (default /work/shared/peers; its README says what it is and how it was
measured). This module starts and stops it with those scripts, and reads and steers the
running Postfix: its queue, its next hop, its content filter's progress.

Nothing of the peer's scripts is changed. The one thing the replay changes is the next hop
(to the timestamping sink), in the run directory's own Postfix configuration, and puts it
back afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

SCRIPTS = Path(os.environ.get("FLOODGATE_PEERS", "/work/shared/peers"))
NETNS = "peers"
RUN = Path(os.environ.get("PEERS_RUN", "/tmp/peers-run"))
SMTP_PORT = 2526
# amavis' main log line per message: what the content filter has finished. It logs a second
# "Passed|Blocked CCAT" line per message (" -> , Hits: ..."), without the Queue-ID: counted,
# that one doubled every figure.
_AMAVIS_DONE = re.compile(rb"\) (?:Passed|Blocked) [A-Z-]+ .*Queue-ID: ")


def setup(log: Path, lifetime: int = 3600) -> None:
    """setup.sh: installs what is missing, (re)starts the whole stack, fresh logs and
    queue; its watchdog runs stop.sh after `lifetime` seconds whatever happens here."""
    env = dict(os.environ, PEERS_RUN=str(RUN), PEERS_NETNS=NETNS,
               PEERS_MAX_LIFETIME=str(lifetime))
    with open(log, "ab") as out:
        done = subprocess.run([str(SCRIPTS / "setup.sh")], stdout=out, stderr=subprocess.STDOUT,
                              env=env, timeout=1800, cwd="/tmp")
    if done.returncode != 0:
        raise RuntimeError(f"{SCRIPTS / 'setup.sh'} failed ({done.returncode}); see {log}")


def stop(log: Path) -> None:
    """stop.sh: stops the pids setup.sh recorded and deletes the namespace."""
    with open(log, "ab") as out:
        subprocess.run([str(SCRIPTS / "stop.sh")], stdout=out, stderr=subprocess.STDOUT,
                       env=dict(os.environ, PEERS_RUN=str(RUN)), timeout=300, cwd="/tmp")


def available() -> str | None:
    """Why the peer stack cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (setup.sh installs packages and makes a network namespace)"
    if not (SCRIPTS / "setup.sh").exists():
        return f"no {SCRIPTS / 'setup.sh'} (set FLOODGATE_PEERS)"
    return None


class Postfix:
    """The running peer, seen from inside its namespace (the replay runs there)."""

    def __init__(self, run: Path = RUN):
        cfg = json.loads((run / "peers.json").read_text())
        self.run = run
        self.pf = run / "postfix"
        self.queue_dir = Path(cfg["queue_dir"])
        self.amavis_log = Path(cfg["amavis_log"])
        self.sink_port = int(cfg["sink_port"])
        self.port = int(cfg["smtp_port"])
        self._saved: dict[str, str] = {}

    def _postconf(self, *args: str) -> str:
        return subprocess.run(["postconf", "-c", str(self.pf), *args], check=True,
                              capture_output=True, text=True).stdout

    def _reload(self) -> None:
        subprocess.run(["postfix", "-c", str(self.pf), "reload"], check=True,
                       capture_output=True)

    def next_hop(self, port: int) -> None:
        """Deliver to 127.0.0.1:`port` instead of the peer's counting sink."""
        if not self._saved:
            self._saved = {k: self._postconf("-h", k).strip()
                           for k in ("relay_transport", "default_transport")}
            self._saved["transport"] = (self.pf / "transport").read_text()
        hop = f"smtp:[127.0.0.1]:{port}"
        self._postconf("-e", f"relay_transport = {hop}", f"default_transport = {hop}")
        (self.pf / "transport").write_text(f"example.org {hop}\n")
        subprocess.run(["postmap", "-c", str(self.pf), f"hash:{self.pf / 'transport'}"],
                       check=True)
        self._reload()

    def restore(self) -> None:
        """Put the peer's own next hop back."""
        if not self._saved:
            return
        self._postconf("-e", *(f"{k} = {self._saved[k]}"
                               for k in ("relay_transport", "default_transport")))
        (self.pf / "transport").write_text(self._saved["transport"])
        subprocess.run(["postmap", "-c", str(self.pf), f"hash:{self.pf / 'transport'}"],
                       check=True)
        self._reload()
        self._saved = {}

    def queued(self) -> int:
        """Messages in Postfix's queue: accepted and not yet through amavis (or not yet
        delivered after it)."""
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue_dir / q):
                n += len(files)
        return n

    def purge(self) -> None:
        """Drop the whole queue (the next step starts empty)."""
        subprocess.run(["postsuper", "-c", str(self.pf), "-d", "ALL"], check=True,
                       capture_output=True)

    def filtered(self) -> int:
        """Messages amavis has finished (passed or blocked) since the stack started."""
        try:
            return len(_AMAVIS_DONE.findall(self.amavis_log.read_bytes()))
        except OSError:
            return 0
