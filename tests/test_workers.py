"""`floodgate serve --workers 2`: two processes share the listening socket, both take
connections, and SIGTERM to the supervisor stops them all."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

from tests.support import FLOODGATE, ROOT, free_port, wait_until, write_config


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def established_inodes(port: int) -> set[str]:
    """Inodes of ESTABLISHED IPv4 sockets whose local port is `port` (the server side)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "relay.toml", store_url=f"sqlite:///{tmp_path}/fg.db",
                          port=port)
    log_path = tmp_path / "relay.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*FLOODGATE, "-c", str(config), "serve", "--workers", "2"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until(lambda: log_path.read_text().count(" ready ") >= 2, 60, "two workers ready")
        workers = children(proc.pid)
        assert len(workers) == 2, log_path.read_text()

        # Many connections at once, from different source ports: the kernel spreads them
        # over both workers' sockets (all on one worker: about 2**-39).
        clients = []
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert s.recv(512).startswith(b"220 ")
            clients.append(s)
        established = established_inodes(port)
        per_worker = {pid: len(socket_inodes(pid) & established) for pid in workers}
        assert all(n > 0 for n in per_worker.values()), per_worker
        assert sum(per_worker.values()) == 40, per_worker
        for s in clients:
            s.close()

        # and each answers a whole session
        for _ in range(4):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                code, _ = smtp.ehlo("client.test")
                assert code == 250
                assert smtp.docmd("MAIL", "FROM:<a@sender.test>")[0] == 250
                assert smtp.docmd("RCPT", "TO:<nobody@example.org>")[0] == 550

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} still running"
        text = log_path.read_text()
        assert text.count("worker stopped") == 2, text
        assert "all workers stopped" in text
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens any more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
