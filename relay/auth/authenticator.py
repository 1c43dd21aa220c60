"""What the SMTP session holds: `[auth]` read once, its resolver (and so its cache) shared by
every message of the process, and the header surgery for an authenticated message."""

from __future__ import annotations

from collections.abc import Iterable

from filters.address import normalise_domain
from relay.auth.check import Action, AuthReport, authenticate, strictest
from relay.auth.header import NAME, authentication_results, strip_ours
from relay.auth.resolver import Resolver
from relay.config.auth import AuthConfig

TAG_HEADER = "X-Floodgate-DMARC"  # added when a DMARC failure is tagged (X-Floodgate-* are
# stripped from what senders supply, so a filter may trust it)


class Authenticator:
    def __init__(self, config: AuthConfig, authserv_id: str):
        self.config = config
        self.authserv_id = authserv_id
        self.resolver = Resolver(config.nameserver, config.timeout)

    async def check(self, message: bytes, client: str, helo: str,
                    mail_from: str) -> AuthReport:
        return await authenticate(message, client, helo, mail_from, self.resolver,
                                  self.config.trusted_arc_sealers)

    def action(self, report: AuthReport, rcpts: Iterable[str]) -> Action:
        """The strictest `dmarc_reject` of the recipients' domains applied to `report`."""
        domains = {normalise_domain(r.rpartition("@")[2]) for r in rcpts} or {""}
        return report.action(strictest(self.config.reject_action(d) for d in domains))

    def headers(self, report: AuthReport, action: Action) -> list[tuple[str, str]]:
        """Ours, top first: Authentication-Results, and the tag when the failure is tagged."""
        out = [(NAME, authentication_results(self.authserv_id, report))]
        if action == "tag":
            out.append((TAG_HEADER, f"fail policy={report.dmarc.policy} "
                                    f"header.from={report.dmarc.from_domain}"))
        return out

    def strip(self, head: bytes) -> bytes:
        return strip_ours(head, self.authserv_id)
