"""One palette and one tick rule for both charts: the console's CSS variables mirror
blocklist/chart_style.py, and nice_ticks gives round steps that cover the data.
(tests/test_web_browser.py checks the console's copy of the tick rule and its bar colours in
the browser; tests/test_reports.py the PNG chart's axes.)"""

from __future__ import annotations

import re
from itertools import pairwise

from blocklist.chart_style import CHROME, OUTCOME_COLOURS, STEPS, nice_ticks
from blocklist.reports import OUTCOMES
from tests.support import ROOT

STYLE = ROOT / "relay" / "web" / "static" / "style.css"


def css_variables() -> dict[str, str]:
    root = re.search(r":root\s*\{(.*?)\}", STYLE.read_text(), re.S)
    assert root, "no :root block in style.css"
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})\s*;", root.group(1)))


def test_the_console_css_mirrors_the_palette() -> None:
    css = css_variables()
    outcomes = {k.removeprefix("c-"): v for k, v in css.items() if k.startswith("c-")}
    assert outcomes == OUTCOME_COLOURS
    assert set(OUTCOME_COLOURS) == set(OUTCOMES)  # every outcome has its colour
    assert {k: css[k] for k in CHROME} == CHROME


def test_the_console_script_has_no_colours_of_its_own() -> None:
    script = (STYLE.parent / "app.js").read_text()
    assert not set(re.findall(r"#[0-9a-fA-F]{6}\b", script)) & set(OUTCOME_COLOURS.values())


def is_round(step: int) -> bool:
    return step >= 1 and int(str(step).rstrip("0")) in STEPS


def test_nice_ticks_are_round_cover_the_data_and_are_the_fewest() -> None:
    for count in (3, 4, 8):
        for maximum in [*range(0, 2000), 9_999, 10_000, 10_001, 123_456, 10**9 + 1]:
            ticks = nice_ticks(maximum, count)
            step = ticks[1] - ticks[0]
            assert ticks[0] == 0 and is_round(step), (maximum, ticks)
            assert all(b - a == step for a, b in pairwise(ticks))
            assert ticks[-1] >= maximum and (ticks[-2] < maximum or ticks[-2] == 0)
            assert len(ticks) - 1 <= count
            smaller = [m * 10**k for k in range(len(str(step))) for m in STEPS
                       if m * 10**k < step]
            assert all(s * count < maximum for s in smaller), (maximum, count, step)
