"""Mail authentication at the edge: SPF, DKIM, DMARC and ARC, and the one
Authentication-Results header Floodgate writes (issue #19).

Once Floodgate is a domain's MX, the domain's own servers see only Floodgate's address, so
SPF can be checked nowhere else. Every check here is DNS from end to end; all of them ask
through one `TxtLookup` (relay/auth/lookup.py) so timeouts and caching have one owner.

Layering: relay.smtp calls this package; it may use relay.config, relay.logs, relay.reasons
and filters, and nothing above it.
"""
