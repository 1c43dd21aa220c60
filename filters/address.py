"""Address handling shared by the recipient check and the alias table."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(domain: str) -> str:
    """Lower-case, strip one trailing dot, and IDNA-encode, so U-labels and A-labels agree."""
    d = domain.strip().rstrip(".").lower()
    if not d:
        return d
    try:
        return d.encode("idna").decode("ascii")
    except UnicodeError:
        return d


def valid_domain(domain: str) -> bool:
    """A normalised host name: dot-separated LDH labels, 255 octets at most (RFC 5321 4.5.3.1.2)."""
    if not domain or len(domain) > 255:
        return False
    return all(_LABEL.match(label) for label in domain.split("."))


def split_address(address: str) -> tuple[str, str] | None:
    """`local@domain` to (local, normalised domain); None when it is not a usable mailbox.

    An address literal (`user@[192.0.2.1]`) is returned as is: it is never a hosted domain,
    so the recipient check refuses it as relaying rather than as bad syntax.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > 64:
        return None
    domain = normalise_domain(domain)
    if domain.startswith("["):
        return local, domain
    return (local, domain) if valid_domain(domain) else None


def lookup_keys(local: str, domain: str, *, case_sensitive: bool, delimiter: str) -> list[str]:
    """The alias-table keys an address may match, most specific first.

    With a recipient delimiter (`+`), `user+tag@d` also matches `user@d`, as Postfix's
    `recipient_delimiter` does.
    """
    if not case_sensitive:
        local = local.lower()
    keys = [f"{local}@{domain}"]
    if delimiter and delimiter in local:
        base = local.split(delimiter, 1)[0]
        if base:
            keys.append(f"{base}@{domain}")
    return keys
