"""`[domains."example.org".verify]`: recipient verification for addresses the alias table does
not hold (relay/smtp/verify.py): an RCPT probe to the domain's own server and/or an LDAP
lookup, cached, rate-limited per domain."""

from __future__ import annotations

from importlib.util import find_spec

from pydantic import Field

from relay.config.types import Duration, Strict


class VerifyConfig(Strict):
    smtp: bool = Field(
        default=False,
        description="probe the domain's `next_hop`: `MAIL FROM:<>`, `RCPT TO`, `QUIT`, never "
                    "DATA, as Postfix's reject_unverified_recipient")
    ldap_url: str | None = Field(
        default=None, description='LDAP server to look addresses up in, `"ldap://host:389"`')
    ldap_base: str = Field(default="", description="search base of the LDAP lookup")
    ldap_filter: str = Field(
        default="(mail=%s)",
        description="LDAP filter; each `%s` is the address, escaped (RFC 4515)")
    ldap_bind_dn: str = Field(default="", description="bind DN; empty: anonymous")
    ldap_bind_password: str = Field(default="", description="password of `ldap_bind_dn`")
    positive_ttl: Duration = Field(
        default=86400.0, description="how long an address found is remembered")
    negative_ttl: Duration = Field(
        default=3600.0, description="how long an address not found is remembered (`550`)")
    rate: float = Field(
        default=5.0, gt=0,
        description="lookups per second for the domain (a token bucket; cache hits are free); "
                    "past it: `450 4.1.1`")  # per relay process, like the cache
    burst: int = Field(default=20, gt=0, description="lookups the bucket holds")
    timeout: Duration = Field(
        default=10.0, gt=0,
        description="for one lookup; past it the recipient gets `450 4.1.1`, never `550`")
    cache_size: int = Field(default=100_000, gt=0, description="addresses remembered, per "
                                                                "domain and relay process")

    def problem(self) -> str | None:
        """What makes these settings unusable (checked by DomainConfig), or None."""
        if not self.smtp and not self.ldap_url:
            return "set smtp = true or ldap_url (or both)"
        if self.ldap_url and "%s" not in self.ldap_filter:
            return "ldap_filter needs a %s for the address"
        # ldap3 is an optional extra: say so at check-config and start-up, not as a 450 for
        # every recipient once the first lookup fails to import it
        if self.ldap_url and find_spec("ldap3") is None:
            return "ldap_url needs the ldap extra: pip install 'floodgate[ldap]'"
        return None
