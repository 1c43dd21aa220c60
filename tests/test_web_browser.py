"""The console in a real browser (Debian's chromium, headless, driven by Playwright): a host
blocked by real traffic through a running relay shows up, its page explains the score, and
the unblock button lets it back in. Screenshots land in var/artefacts/."""

from __future__ import annotations

import json
import re
import shutil
import smtplib
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import func, select

from blocklist import blocks
from blocklist.chart_style import OUTCOME_COLOURS, nice_ticks
from relay.store.database import make_engine
from relay.store.tables import Event
from tests import axe
from tests.support import ROOT, split_ref, wait_until
from tests.test_blocking import dictionary_attack, refused_at_connect
from tests.test_smtp import ALIASES, MESSAGE
from tests.web_support import ADMIN, ADMIN_NAME, READ, gate_caught_up, relay_extra, web_starter

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
ARTEFACTS = ROOT / "var" / "artefacts"


@pytest.fixture
def start_web():  # type: ignore[no-untyped-def]
    yield from web_starter()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url + "/")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("#app")).to_be_visible()


def keep(page: Page, tmp_path: Path, name: str) -> None:
    """A full-page screenshot in the test's tmp dir, copied to var/artefacts/."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, ARTEFACTS / name)


def test_console_shows_a_real_attacker_and_unblocks_it(start_relay, start_web, sqlite_url,
                                                       tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                      source_address=("127.0.0.20", 0)) as smtp:  # one good message, queued
        smtp.sendmail("a@sender.test", ["alice@example.org"], MESSAGE)
    unknown = dictionary_attack(relay, "127.0.0.5").count(550)  # then 554: blocked
    engine = make_engine(sqlite_url)
    wait_until(lambda: blocks.active_blocks(engine), what="the scorer to block 127.0.0.5")
    engine.dispose()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        viewport = {"width": 1366, "height": 900}  # a laptop screen
        reader = browser.new_page(viewport=viewport)
        sign_in(reader, web.url, READ)
        expect(reader.locator('#blocked tr[data-network="127.0.0.5"]')).to_be_visible()
        expect(reader.locator("button.unblock")).to_have_count(0)  # read token: no button
        expect(reader.locator("#block-form")).to_be_hidden()
        reader.close()

        page = browser.new_page(viewport=viewport)
        sign_in(page, web.url, ADMIN)
        expect(page.locator("#who")).to_have_text(f"{ADMIN_NAME} (admin)")
        row = page.locator('#blocked tr[data-network="127.0.0.5"]')
        expect(row).to_contain_text(re.compile(r"unknown_rcpt=\d+"))  # scored mid-attack too
        expect(row).to_contain_text("auto")
        expect(row.locator("td.left")).to_contain_text("m")  # time left, counting down
        attacker = page.locator('#hosts tr[data-host="127.0.0.5"]')
        expect(attacker).to_contain_text(f"unknown_rcpt {unknown}")
        expect(page.locator("#chart svg rect").first).to_be_visible()
        expect(page.locator("#legend")).to_contain_text("unknown_rcpt")
        expect(page.locator("#legend")).to_contain_text("accepted")
        expect(page.locator("#queue")).to_contain_text("1 queued")
        keep(page, tmp_path, "web-console.png")

        attacker.locator("a").click()
        expect(page.locator("#state")).to_have_text("blocked")
        expect(page.locator("#why")).to_contain_text(re.compile(r"unknown_rcpt=\d+"))
        expect(page.locator("#reasons")).to_contain_text("unknown_rcpt")
        expect(page.locator("#score-text")).to_contain_text(
            re.compile(r"score \d+ \(blocks at 10\)"))
        keep(page, tmp_path, "web-console-host.png")

        page.goto(web.url + "/console/")  # the token stays for the tab
        row = page.locator('#blocked tr[data-network="127.0.0.5"]')
        row.locator("button.unblock").click()
        expect(page.locator("#action-msg")).to_have_text("unblocked 127.0.0.5")
        expect(row).to_have_count(0)
        expect(page.locator("#audit")).to_contain_text("unblock")
        browser.close()

    gate_caught_up(relay, sqlite_url)
    assert refused_at_connect(relay, "127.0.0.5") is None
    assert (ARTEFACTS / "web-console.png").stat().st_size > 10_000


def attacked(start_relay, start_web, sqlite_url):  # type: ignore[no-untyped-def]
    """A relay with one queued message and 127.0.0.5 blocked by its dictionary attack, and
    the web server on the same store."""
    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10,
                      source_address=("127.0.0.20", 0)) as smtp:
        smtp.sendmail("a@sender.test", ["alice@example.org"], MESSAGE)
    dictionary_attack(relay, "127.0.0.5")
    engine = make_engine(sqlite_url)
    wait_until(lambda: blocks.active_blocks(engine), what="the scorer to block 127.0.0.5")
    # The block is made as the offence is recorded, before the events reach the store. One
    # more knock, refused at the door, is 127.0.0.5's last event; events are written in
    # order, so once its session is stored the whole attack is, as the pages will show it.
    refusal = wait_until(lambda: refused_at_connect(relay, "127.0.0.5"), what="the door")
    _, ref = split_ref(str(refusal))

    def stored() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(Event).where(
                Event.session == ref)).scalar_one()

    wait_until(stored, what="the attack's events in the store")
    engine.dispose()
    return relay, web


def test_every_console_page_passes_axe(start_relay, start_web, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """axe-core (vendored) finds nothing serious or critical on any page in any state:
    signed out, read-only, admin (with the block form), a host, the empty host lookup."""
    _, web = attacked(start_relay, start_web, sqlite_url)
    found: dict[str, list] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        viewport = {"width": 1366, "height": 900}
        page = browser.new_page(viewport=viewport)
        page.goto(web.url + "/console/")
        expect(page.locator("#login")).to_be_visible()
        found["overview, signed out"] = axe.violations(page)
        page.goto(web.url + "/console/host.html")
        expect(page.locator("#login")).to_be_visible()
        found["host page, signed out"] = axe.violations(page)
        page.close()

        for token, who in ((READ, "read"), (ADMIN, "admin")):
            page = browser.new_page(viewport=viewport)
            sign_in(page, web.url, token)
            expect(page.locator('#blocked tr[data-network="127.0.0.5"]')).to_be_visible()
            expect(page.locator("#chart svg rect").first).to_be_visible()
            found[f"overview, {who}"] = axe.violations(page)
            page.goto(web.url + "/console/host.html?a=127.0.0.5")
            expect(page.locator("#state")).to_have_text("blocked")
            found[f"host page, {who}"] = axe.violations(page)
            page.goto(web.url + "/console/host.html")
            expect(page.locator("#lookup")).to_be_visible()
            found[f"host lookup, {who}"] = axe.violations(page)
            page.close()
        browser.close()
    bad = {state: axe.blocking(v) for state, v in found.items() if axe.blocking(v)}
    assert not bad, json.dumps(bad, indent=1)
    rest = {state: [v["id"] for v in vs] for state, vs in found.items() if vs}
    assert not rest, f"minor or moderate axe findings: {rest}"


def round_ticks(ticks: list[float]) -> bool:
    """0, then equal steps of 1, 2 or 5 x 10^n."""
    step = ticks[1] - ticks[0]
    return (ticks[0] == 0 and step >= 1 and float(step).is_integer()
            and str(int(step)).rstrip("0") in ("1", "2", "5")
            and all(b - a == step for a, b in pairwise(ticks)))


def test_chart_ticks_are_round_and_match_the_png(start_relay, start_web,
                                                 sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """The console's y axis: round ticks from 0 to at least the tallest bar, the same ticks
    the PNG chart picks for the same maximum, bars in the one palette."""
    _, web = attacked(start_relay, start_web, sqlite_url)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        sign_in(page, web.url, READ)
        expect(page.locator("#chart svg rect").first).to_be_visible()
        ticks = page.locator("#chart svg text.y-tick").evaluate_all(
            "ts => ts.map(t => Number(t.dataset.value))")
        labels = page.locator("#chart svg text.y-tick").all_text_contents()
        assert round_ticks(ticks), ticks
        assert labels == [f"{t:,}" for t in ticks]
        bars = page.locator("#chart svg rect").evaluate_all(
            "rs => rs.map(r => [r.dataset.outcome, r.getAttribute('fill'), "
            "Number(r.getAttribute('y'))])")
        top = page.locator("#chart svg line.grid").evaluate_all(
            "ls => Math.min(...ls.map(l => Number(l.getAttribute('y1'))))")
        assert all(y >= top for _, _, y in bars), (top, bars)  # the top tick is above them
        times = page.locator("#chart svg text.x-tick").evaluate_all(
            "ts => ts.map(t => Date.parse(t.dataset.time) / 60000)")
        every = times[1] - times[0]
        assert every in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440), times
        assert all(t % every == 0 for t in times) and 4 <= len(times) <= 8, times  # 6 hours
        assert {o: fill for o, fill, _ in bars} == {o: OUTCOME_COLOURS[o] for o, _, _ in bars}
        for maximum in (0, 1, 3, 7, 10, 37, 41, 99, 100, 101, 1234, 25_000, 999_999):
            for count in (4, 8):
                got = page.evaluate(f"niceTicks({maximum}, {count})")
                assert got == nice_ticks(maximum, count), (maximum, count)
                assert round_ticks(got) and got[-1] >= maximum, got
        browser.close()


def test_console_times_are_utc_in_any_timezone(start_relay, start_web, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """A browser in New York still reads every time in UTC, as the CLI and logs give them."""
    _, web = attacked(start_relay, start_web, sqlite_url)
    with web.client(ADMIN) as client:
        client.post("/api/blocks", json={"network": "192.0.2.7", "duration": "1h",
                                         "reason": "utc test"}).raise_for_status()
        audit = client.get("/api/audit", params={"limit": 8}).json()
        host = client.get("/api/hosts/127.0.0.5", params={"events": 30}).json()

    def utc(iso: str, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).strftime(fmt)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(timezone_id="America/New_York",
                                      viewport={"width": 1366, "height": 900})
        page = context.new_page()
        assert page.evaluate("new Date().getTimezoneOffset()") in (240, 300)  # EDT or EST
        sign_in(page, web.url, ADMIN)
        expect(page.locator("#audit tbody tr").first).to_contain_text("192.0.2.7")
        shown = page.locator("#audit tbody tr td:first-child").all_text_contents()
        assert shown == [utc(a["ts"]) for a in audit]
        updated = page.locator("#updated").text_content() or ""
        m = re.fullmatch(r"updated (\d\d):(\d\d):(\d\d) UTC", updated)
        assert m, updated
        now = datetime.now(UTC)
        drift = abs((now.hour * 60 + now.minute) - (int(m[1]) * 60 + int(m[2])))
        assert min(drift, 1440 - drift) < 30, (updated, now)  # New York is 4-5 hours off
        tips = page.locator("#chart svg rect").evaluate_all(
            "rs => rs.map(r => [r.dataset.time, r.querySelector('title').textContent])")
        assert tips and all(tip.startswith(utc(t) + ":") for t, tip in tips), tips[:3]
        page.goto(web.url + "/console/host.html?a=127.0.0.5")
        expect(page.locator("#state")).to_have_text("blocked")
        shown = page.locator("#events tbody tr td:first-child").all_text_contents()
        assert shown == [utc(e["ts"], "%m-%d %H:%M:%S") for e in host["events"]]
        browser.close()


def test_the_trace_box_tells_a_sessions_story(start_relay, start_web, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    """The console's trace page: a refusal's reference, then the sender's address typed into
    the box, then a Message-ID, each shows the session's story; axe finds nothing."""
    from tests.test_trace import MESSAGE as WITH_ID
    from tests.test_trace import MESSAGE_ID, queue, reasons_stored, refuse_unknown

    relay = start_relay(sqlite_url, aliases=ALIASES, extra=relay_extra())
    web = start_web(relay.config)
    ref = refuse_unknown(relay)
    queue_id, queued = queue(relay, "writer@sender.test", "alice@example.org", WITH_ID)
    wait_until(lambda: reasons_stored(sqlite_url, "accepted") == 1, what="both sessions")
    found: dict[str, list] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(web.url + "/console/trace.html")
        expect(page.locator("#login")).to_be_visible()
        found["trace, signed out"] = axe.violations(page)
        sign_in(page, web.url, READ)
        page.click("header a[href='trace.html']")
        expect(page.locator("#trace-search")).to_be_visible()
        found["trace, empty"] = axe.violations(page)

        page.fill("#q", ref)
        page.click("#trace-search button[type=submit]")
        story = page.locator(f'#stories section[data-session="{ref}"]')
        expect(story).to_contain_text("unknown_rcpt")
        expect(story).to_contain_text("<nobody@example.org>")
        expect(page.locator("#trace-msg")).to_have_text("1 session")
        found["trace, a refusal"] = axe.violations(page)

        for typed in ("writer@sender.test", MESSAGE_ID):  # an address, a Message-ID
            page.fill("#q", typed)
            page.click("#trace-search button[type=submit]")
            story = page.locator(f'#stories section[data-session="{queued}"]')
            expect(story).to_contain_text(f"queue_id={queue_id}")
            expect(story).to_contain_text(f"message_id={MESSAGE_ID}")
            expect(page.locator("#stories section")).to_have_count(1)
        found["trace, a message"] = axe.violations(page)
        page.fill("#q", "000000000000")
        page.click("#trace-search button[type=submit]")
        expect(page.locator("#trace-msg")).to_have_text("nothing found")
        browser.close()
    bad = {state: axe.blocking(v) for state, v in found.items() if axe.blocking(v)}
    assert not bad, json.dumps(bad, indent=1)
    rest = {state: [v["id"] for v in vs] for state, vs in found.items() if vs}
    assert not rest, f"minor or moderate axe findings: {rest}"
