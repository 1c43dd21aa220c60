"""What the PNG timeline (blocklist/charts.py) and the web console's chart share, defined
once: a colour per outcome and round axis ticks. The console's style.css mirrors the
colours as CSS variables and its app.js computes the same ticks; tests/test_chart_style.py
and tests/test_web_browser.py check that they agree."""

from __future__ import annotations

from math import ceil

# One fixed colour per outcome, so charts from different days and both front ends compare.
OUTCOME_COLOURS = {
    "accepted": "#2e9e5b", "unknown_rcpt": "#f28e2b", "trap": "#b35806",
    "relay_denied": "#8e6bbf", "virus": "#d62728", "spam": "#e377c2", "dnsbl": "#1f77b4",
    "blocked": "#555555", "protocol": "#8c564b", "other": "#aaaaaa", "tempfail": "#e6c229",
    "observed": "#17becf",
}
# The chart's text and grid lines (the console's --ink, --muted and --line).
CHROME = {"ink": "#1d2430", "muted": "#5c6470", "line": "#e2e5ea"}

STEPS = (1, 2, 5)


def nice_step(maximum: float, count: int) -> int:
    """The smallest step of 1, 2 or 5 x 10^n that reaches `maximum` in `count` steps.
    Whole numbers only (the chart counts events), by integer arithmetic so that app.js's
    copy gives the same answer."""
    magnitude = 1
    while True:
        for m in STEPS:
            if m * magnitude * count >= maximum:
                return m * magnitude
        magnitude *= 10


def nice_ticks(maximum: float, count: int = 4) -> list[int]:
    """0 up to the first multiple of the step at or above `maximum` (at least one step)."""
    step = nice_step(maximum, count)
    steps = max(1, ceil(maximum / step))
    return [i * step for i in range(steps + 1)]
