"""Connection probe run inside a namespace: one request per stdin line, one answer per line.

Request: `SOURCE HOST PORT TIMEOUT`. Answer: the relay's first reply line (it got through),
`timeout` (dropped by the firewall), `refused`, or `error: ...`. One long-lived process, so a
test can poll quickly without starting Python for every attempt.
"""

from __future__ import annotations

import socket
import sys


def probe(source: str, host: str, port: int, timeout: float) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.bind((source, 0))
            s.connect((host, port))
        except TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return f"error: {e}"
        try:
            banner = s.makefile("rb").readline().decode(errors="replace").strip()
            s.sendall(b"QUIT\r\n")
        except OSError as e:
            return f"connected, then: {e}"
        return banner or "closed"


def main() -> None:
    for line in sys.stdin:
        source, host, port, timeout = line.split()
        print(probe(source, host, int(port), float(timeout)), flush=True)


if __name__ == "__main__":
    main()
