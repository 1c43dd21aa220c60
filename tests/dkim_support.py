"""Real DKIM keys for the DKIM and ARC tests, the zone lines that publish them in nsd
(tests/dns_server.py), and the TxtLookup the checks ask that nsd through."""

from __future__ import annotations

import base64
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver
import nacl.encoding
import nacl.signing

from relay.auth.lookup import DnsTemporary, TxtLookup


@dataclass(frozen=True)
class Key:
    private: bytes      # what dkim.sign takes: PKCS#1 PEM, or an ed25519 seed in base64
    public: str         # p= in base64
    kind: str           # k=: rsa or ed25519

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.kind == "rsa" else b"ed25519-sha256"

    def record(self, selector: str, extra: str = "") -> str:
        """The zone line publishing this key at `selector._domainkey`."""
        return txt_line(f"{selector}._domainkey", f"v=DKIM1; k={self.kind}; {extra}"
                                                   f"p={self.public}")


def rsa_key(directory: Path, bits: int = 2048) -> Key:
    """An RSA key made by openssl, as a signer would make one."""
    pem = directory / f"rsa{bits}.pem"
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(pem), str(bits)],
                   check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(pem), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return Key(pem.read_bytes(), base64.b64encode(der).decode(), "rsa")


def ed25519_key() -> Key:
    signing = nacl.signing.SigningKey.generate()
    return Key(signing.encode(encoder=nacl.encoding.Base64Encoder),
               signing.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode(),
               "ed25519")


def txt_line(owner: str, text: str) -> str:
    """A TXT record in zone syntax, cut into strings of at most 255 bytes (RFC 1035 3.3)."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return f"{owner} TXT " + " ".join(f'"{p}"' for p in parts)


def txt_lookup(resolver: dns.asyncresolver.Resolver) -> TxtLookup:
    """The TxtLookup contract over a dnspython resolver: no name or no TXT is [], a
    timeout or SERVFAIL is DnsTemporary."""

    async def lookup(name: str) -> list[bytes]:
        try:
            answer = await resolver.resolve(name.rstrip(".") + ".", "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            raise DnsTemporary(str(e)) from e
        return [b"".join(r.strings) for r in answer]

    return lookup


def silent_lookup(address: str, timeout: float = 0.5) -> TxtLookup:
    """A TxtLookup asking a name server that never answers (tests/dns_server.py)."""
    host, port = address.split(":")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port)
    resolver.lifetime = resolver.timeout = timeout
    return txt_lookup(resolver)


class RecordingExecutor(ThreadPoolExecutor):
    """Records on which thread each piece of work it was given ran."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.ran: list[tuple[str, int]] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        def recorded():  # type: ignore[no-untyped-def]
            self.ran.append((fn.__name__, threading.get_ident()))
            return fn(*args, **kwargs)

        return super().submit(recorded)


MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject: quarterly figures\r\n"
           b"Date: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
           b"Message-ID: <figures-1@example.test>\r\n"
           b"\r\n"
           b"The figures are attached.\r\n"
           b"Regards, Alice\r\n")
