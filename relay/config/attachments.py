"""`[attachments]`: the attachment policy (filters/attachments.py), global lists and
per-domain overrides. No section: no attachment policy."""

from __future__ import annotations

from pydantic import Field, field_validator

from filters.attachments import BANNED_EXTENSIONS, BANNED_TYPES
from relay.config.types import Strict, per_domain


class AttachmentLists(Strict):
    """One domain's lists; a key left out keeps the global list."""

    banned_extensions: list[str] | None = None
    banned_types: list[str] | None = None


class AttachmentsConfig(Strict):
    enabled: bool = Field(
        default=True,
        description="refuse banned attachments (`554 5.7.1`, reason `banned_attachment`) "
                    "before any scanner")
    banned_extensions: list[str] = Field(
        default=list(BANNED_EXTENSIONS),
        description="file name extensions refused, of parts and archive members")
    banned_types: list[str] = Field(
        default=list(BANNED_TYPES), description="declared content types refused")
    domains: dict[str, AttachmentLists] = Field(
        default_factory=dict,
        description="per hosted domain, `{ banned_extensions = [...], banned_types = [...] }` "
                    "replacing the global lists for its recipients")

    @field_validator("domains")
    @classmethod
    def _normalise(cls, v: dict[str, AttachmentLists]) -> dict[str, AttachmentLists]:
        return per_domain(v)

    def lists_for(self, domain: str) -> tuple[list[str], list[str]]:
        """(extensions, types) for a recipient domain."""
        own = self.domains.get(domain)
        exts = own.banned_extensions if own and own.banned_extensions is not None else None
        types = own.banned_types if own and own.banned_types is not None else None
        return (self.banned_extensions if exts is None else exts,
                self.banned_types if types is None else types)
