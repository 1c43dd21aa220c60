"""`floodgate queue ...` against the spool of a running relay."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.sink import Sink
from tests.support import floodgate, wait_until
from tests.test_delivery import message as make_message
from tests.test_delivery import queued, send, start


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.down()


def listing(relay) -> dict[str, dict]:  # type: ignore[no-untyped-def, type-arg]
    out = floodgate(relay.config, "queue", "list", "--json").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {row["queue_id"]: row for row in rows}


def test_list_show_hold_release_delete_flush(start_relay, sqlite_url, sink) -> None:  # type: ignore[no-untyped-def]
    # Long backoffs: after the first failed attempt only `flush` and `release` cause retries.
    relay = start(start_relay, sqlite_url, sink.hop,
                  'min_backoff = "1h"\nmax_backoff = "1h"')
    held = send(relay, ["a@dest.test"], make_message("held"))
    multi = send(relay, ["b@dest.test", "c@dest.test"], make_message("multi"))
    doomed = send(relay, ["d@dest.test"], make_message("doomed"))

    def all_tried() -> bool:
        rows = listing(relay)
        return len(rows) == 3 and all(r["attempts"] >= 1 for r in rows.values())

    wait_until(all_tried, what="first attempts")
    rows = listing(relay)
    reply = rows[multi]["recipients"]["b@dest.test"]["reply"]
    assert reply.startswith("451 4.4.1 connect to 127.0.0.1:"), reply
    assert rows[multi]["next_attempt"] > rows[multi]["last_attempt"] + 3000

    text = floodgate(relay.config, "queue", "list").stdout
    assert f"{multi}  " in text and "        c@dest.test" in text
    assert "-- 3 messages, 4 recipients pending, 0 held" in text
    shown = floodgate(relay.config, "queue", "show", multi).stdout
    assert "sender:       <author@sender.test>" in shown
    assert "pending    b@dest.test  attempts=1" in shown and "451 4.4.1 connect to" in shown

    assert floodgate(relay.config, "queue", "hold", held).stdout.strip() == f"{held}: held"
    assert floodgate(relay.config, "queue", "delete", doomed).stdout.strip() == \
        f"{doomed}: deleted"
    assert f"{held}! " in floodgate(relay.config, "queue", "list").stdout

    sink.up()
    out = floodgate(relay.config, "queue", "flush").stdout
    assert "the relay is retrying now" in out
    wait_until(lambda: sink.to("b@dest.test") and sink.to("c@dest.test"), what="flush")
    wait_until(lambda: queued(relay) == [held], what="only the held message left")
    assert sink.to("a@dest.test") == [] and sink.to("d@dest.test") == []

    out = floodgate(relay.config, "queue", "release", held).stdout
    assert out.strip() == f"{held}: released"
    wait_until(lambda: sink.to("a@dest.test"), what="released message delivered")
    wait_until(lambda: not queued(relay), what="spool empty")
    assert "-- 0 messages" in floodgate(relay.config, "queue", "list").stdout
    assert sink.to("d@dest.test") == []

    missing = floodgate(relay.config, "queue", "show", "NOSUCHID", check=False)
    assert missing.returncode == 1 and "no such message" in missing.stderr
