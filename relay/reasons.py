"""Every reason an event (and a verdict) can carry: the one list `[scoring.weights]` keys,
`floodgate report hosts --reason` and the web API's `reason` filter are checked against.

A leaf module that imports nothing of ours, so every layer may use it (relay.config at the
bottom validates weights with it). Filters import nothing from relay and keep writing plain
strings; tests/test_reasons.py checks that every reason the code writes is listed here.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # connect
    CONNECT = "connect"  # a session began (or could not be set up: 421)
    BLOCKED = "blocked"  # the client is on the blocklist
    DNSBL = "dnsbl"  # listed by the DNS blocklists at or above [dnsbl] reject_score
    PREGREET = "pregreet"  # talked before the greeting
    BUSY = "busy"  # limits.max_connections reached
    RATE_LIMIT = "rate_limit"  # limits.max_per_client or connection_rate
    # commands and envelope
    PROTOCOL = "protocol"  # a command the client got wrong
    TIMEOUT = "timeout"  # idle, DATA, session or reply timeout
    ERROR_LIMIT = "error_limit"  # cut off at smtpd_hard_error_limit
    JUNK_LIMIT = "junk_limit"  # ... with junk commands past smtpd_junk_command_limit
    QUEUE_FULL = "queue_full"  # back-pressure: spool or disk full
    NULL_SENDER_SHARE = "null_sender_share"  # the client's share of null-sender mail
    SENDER_BLOCKED = "sender_blocked"  # sender, From domain or HELO on the sender block list
    SENDER_ALLOWED = "sender_allowed"  # ... on the sender allow list (lifts DNSBL, greylisting)
    # recipients
    KNOWN_RCPT = "known_rcpt"
    UNKNOWN_RCPT = "unknown_rcpt"
    RCPT_UNVERIFIED = "rcpt_unverified"  # verification could not say now (450 4.1.1)
    # ... past the domain's verification rate, no lookup made: a dictionary attack's guesses
    VERIFY_LIMITED = "verify_limited"
    POSTMASTER = "postmaster"  # routed to the configured postmaster
    TRAP = "trap"  # a spam trap ([scoring] traps)
    RELAY_DENIED = "relay_denied"  # a domain not hosted here
    TOO_MANY_RCPTS = "too_many_rcpts"  # past relay.max_recipients
    GREYLISTED = "greylisted"  # [greylist]: a new triplet, told to retry (451 4.7.1)
    GREYLIST_PASSED = "greylist_passed"  # ... and its retry, which passed
    # the message
    SIZE = "size"  # past max_message_size or header_size_limit
    TOO_MANY_HOPS = "too_many_hops"  # past relay.hopcount_limit: a mail loop
    BANNED_ATTACHMENT = "banned_attachment"  # [attachments]: an executable, by name or content
    VIRUS = "virus"
    SCAN_OVERSIZE = "scan_oversize"  # past [clamav] max_size
    SCAN_LIMITS = "scan_limits"  # past clamd's own limits
    CLAMAV_UNSCANNED = "clamav_unscanned"  # let through unscanned (on_error/on_oversize)
    SPAM = "spam"  # at or above reject_score
    SPAM_TAGGED = "spam_tagged"  # at or above tag_score
    SPAM_CHECKED = "spam_checked"  # below tag_score
    SPAM_OVERSIZE = "spam_oversize"  # past [spamassassin] max_size
    SPAMASSASSIN_UNSCANNED = "spamassassin_unscanned"
    # mail authentication ([auth], relay/auth/): what a message's checks found
    SPF_FAIL = "spf_fail"
    SPF_SOFTFAIL = "spf_softfail"
    DKIM_FAIL = "dkim_fail"  # a DKIM signature that does not verify
    DMARC_REJECT = "dmarc_reject"  # DMARC failed, the domain's policy is p=reject
    DMARC_QUARANTINE = "dmarc_quarantine"  # ... p=quarantine (or p=reject sampled by pct)
    SPOOL = "spool"  # the message could not be written to the spool
    ACCEPTED = "accepted"  # queued for delivery
    # a filter that failed or timed out (the pipeline's `<filter name>_error`)
    RECIPIENTS_ERROR = "recipients_error"
    DNSBL_ERROR = "dnsbl_error"
    CLAMAV_ERROR = "clamav_error"
    ATTACHMENTS_ERROR = "attachments_error"
    SPAMASSASSIN_ERROR = "spamassassin_error"
    # delivery to the next hop
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
