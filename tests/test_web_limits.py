"""`floodgate web` refuses an oversized request body with 413 before reading it, and before
any token check: an anonymous 200 MB upload was read whole before its 401."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support import free_port
from tests.test_smtp import ALIASES
from tests.web_support import ADMIN, relay_extra, web_starter

LIMIT = 65536


@pytest.fixture
def web(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    starter = web_starter()
    start = next(starter)
    relay = start_relay(sqlite_url, aliases=ALIASES,
                        extra=relay_extra(free_port()).replace(
                            "refresh = 1\n", f"refresh = 1\nmax_body_size = {LIMIT}\n"))
    yield start(relay.config)
    next(starter, None)


def response_head(sock: socket.socket) -> bytes:
    """Read until the end of the response head (or the connection closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("token", [None, ADMIN], ids=["anonymous", "admin"])
def test_declared_oversize_body_is_413_before_it_is_sent(web, token: str | None) -> None:  # type: ignore[no-untyped-def]
    """200 MB declared, 1 KB sent: the answer comes without waiting for the rest."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
        sock.sendall(f"POST /api/blocks HTTP/1.1\r\nHost: x\r\n{auth}"
                     "Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
                     .encode() + b"{" + b" " * 1023)
        head = response_head(sock)
    assert head.startswith(b"HTTP/1.1 413 "), head[:200]


def test_streamed_oversize_body_is_cut_off_at_the_limit(web) -> None:  # type: ignore[no-untyped-def]
    """Chunked, no length declared: 413 once the bytes pass the limit, while the client is
    still sending (it never sends the final chunk)."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=15) as sock:
        sock.sendall(b"POST /api/blocks HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (4096, b" " * 4096)
        sent = 0
        sock.settimeout(0.05)
        head = b""
        while not head and sent < 16 * LIMIT:
            try:
                sock.sendall(chunk)
                sent += 4096
                head = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(15)
        head += response_head(sock) if head and b"\r\n\r\n" not in head else b""
    assert head.startswith(b"HTTP/1.1 413 "), (sent, head[:200])
    assert sent < 4 * LIMIT


def test_bodies_under_the_limit_still_work(web) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=web.url, timeout=30) as anon:
        assert anon.post("/api/blocks", json={"network": "192.0.2.1"}).status_code == 401
        big = anon.post("/api/blocks", content=b"x" * (LIMIT + 1),
                        headers={"Content-Type": "application/json"})
        assert big.status_code == 413
    with httpx.Client(base_url=web.url, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        r = admin.post("/api/blocks", json={"network": "192.0.2.1", "reason": "x" * 100})
        assert r.status_code == 201, r.text
