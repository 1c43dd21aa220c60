"""The LDAP lookup of recipient verification: is there an entry for this address?

ldap3 (the `ldap` extra) is imported on first use, so a relay without LDAP never loads it.
It is synchronous; the caller runs it in a thread. The address is escaped (RFC 4515) before it
goes into the filter: `*`, `(`, `)`, `\\` and NUL in a local part are legal SMTP and would
otherwise widen the search (`*@example.org` matching everyone).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Directory:
    url: str
    base: str
    filter: str  # each %s is the escaped address
    bind_dn: str = ""
    password: str = ""
    timeout: float = 10.0

    def search_filter(self, address: str) -> str:
        from ldap3.utils.conv import escape_filter_chars

        return self.filter.replace("%s", escape_filter_chars(address))

    def lookup(self, address: str) -> tuple[bool | None, str]:
        """(True/False, what) when the directory answered, (None, why) when it did not."""
        import ldap3
        from ldap3.core.exceptions import LDAPException

        seconds = max(1, int(self.timeout))  # ldap3 takes whole seconds
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=seconds)
        try:
            conn = ldap3.Connection(server, user=self.bind_dn or None,
                                    password=self.password or None, read_only=True,
                                    receive_timeout=seconds, raise_exceptions=False)
            if not conn.bind():
                return None, f"LDAP bind to {self.url} failed: {conn.result.get('description')}"
            try:
                found = conn.search(self.base, self.search_filter(address), attributes=[],
                                    size_limit=1, time_limit=seconds)
                result = conn.result.get("description", "")
            finally:
                conn.unbind()
        except (LDAPException, OSError) as e:
            return None, f"LDAP {self.url}: {type(e).__name__}: {e}"
        if found or result == "sizeLimitExceeded":  # more than one entry: still found
            return True, f"found in LDAP {self.url}"
        if result == "success":
            return False, f"not in LDAP {self.url}"
        return None, f"LDAP search at {self.url} failed: {result}"
