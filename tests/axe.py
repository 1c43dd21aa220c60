"""axe-core in the browser test: the vendored engine (tests/vendor/axe-core/) run on a page,
its violations reduced to what a failing assertion should print."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")

RUN = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ") + ": " + n.failureSummary) }));
}"""


@cache
def _source() -> str:
    return AXE.read_text()


def violations(page: Page) -> list[dict[str, Any]]:
    """Every axe violation on the page as it is now. Injected through the devtools protocol,
    not a <script>: the console's Content-Security-Policy (script-src 'self') stays on."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(_source())
    return page.evaluate(RUN)  # type: ignore[no-any-return]


def blocking(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in found if v["impact"] in BLOCKING]
