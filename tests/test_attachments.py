"""The attachment policy ([attachments], filters/attachments.py) through a running relay.

clamd is down for the whole module (its address is a port nothing listens on) with
`on_error = "accept"`: a message that reached clamd would be accepted, marked unscanned. So
every `554 5.7.1` here was given without a clamd round trip, the benchmark's worm included.
"""

from __future__ import annotations

import base64
import gzip
import io
import re
import tarfile
import urllib.parse
import zipfile

import pytest

from scripts.benchlib.scenarios import worm_message, worm_payload
from tests.make_fixtures import with_attachment
from tests.support import free_port, unref
from tests.test_content import send
from tests.test_scan_poisoning import crlf
from tests.test_smtp import ALIASES
from tests.test_zip_limits import one_member_bomb

BANNED = "554 5.7.1 Message refused: attachment type not allowed"


@pytest.fixture
def relay(start_relay, sqlite_url):  # type: ignore[no-untyped-def]
    return start_relay(sqlite_url, aliases=ALIASES, max_message_size=8 << 20, extra=f"""
[attachments]
[attachments.domains."example.net"]
banned_extensions = ["zip"]

[clamav]
address = "127.0.0.1:{free_port()}"
timeout = "3s"
on_error = "accept"
""")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def nested(depth: int, inner: dict[str, bytes]) -> bytes:
    data = zipped(inner)
    for level in range(depth - 1):
        data = zipped({f"level{level}.zip": data})
    return data


def tarred(members: list[tuple[str, bytes]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def gzipped(data: bytes, name: str = "") -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def message(filename_header: str, payload: bytes, ctype: str = "application/octet-stream",
            ) -> bytes:
    """One attachment whose Content-Disposition parameters are written as given."""
    return crlf(
        "From: a@sender.test\nTo: bob@example.org\nSubject: attached\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b1"\n\n--b1\n'
        "Content-Type: text/plain\n\nSee attached.\n\n--b1\n"
        f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n"
        f"Content-Disposition: attachment; {filename_header}\n\n"
        + base64.encodebytes(payload).decode() + "\n--b1--\n")


def attach(name: str, payload: bytes, ctype: str = "application/octet-stream") -> bytes:
    return crlf(with_attachment("attached", "See attached.", payload, name, ctype=ctype))


def refused(relay, data: bytes, detail: str, rcpts=("bob@example.org",)) -> None:  # type: ignore[no-untyped-def]
    code, reply = send(relay, data, rcpts)
    assert (code, f"{code} {unref(reply)}") == (554, BANNED)
    relay.wait_for_log(r"decision .*stage=data action=reject reason=banned_attachment "
                       r"code=554 .*detail=.*" + detail)


def accepted(relay, data: bytes, rcpts=("bob@example.org",)) -> None:  # type: ignore[no-untyped-def]
    assert send(relay, data, rcpts) == (250, "queued")


TEXT = b"quarterly figures\n" * 20


def test_the_benchmark_worms_are_refused_without_clamd(relay) -> None:  # type: ignore[no-untyped-def]
    payload = worm_payload()
    names = set()
    for n in range(12):
        data = worm_message(n, payload)
        names.add(re.search(rb'filename="([^"]+)"', data).group(1))  # type: ignore[union-attr]
        code, reply = send(relay, data)
        assert (code, f"{code} {unref(reply)}") == (554, BANNED)
    # all four of its names, text.zip among them: a PE inside, whatever the name says
    assert names == {b"document.pif", b"text.zip", b"message.scr", b"readme.exe"}
    relay.wait_for_log(r"reason=banned_attachment .*detail=.*executable content in 'text.zip'")
    # and clamd is really down: a harmless message reaches it and is let through unscanned
    accepted(relay, attach("figures.txt", TEXT, "text/plain"))
    relay.wait_for_log(r"reason=accepted .*clamav_unscanned")


def test_names_types_and_content(relay) -> None:  # type: ignore[no-untyped-def]
    refused(relay, attach("photo.jpg.exe", TEXT), r"double extension")
    refused(relay, attach("data.bin", TEXT, "application/x-msdownload"),
            r"banned content type application/x-msdownload")
    refused(relay, attach("notes.txt", b"MZ" + bytes(100), "text/plain"),
            r"executable content in 'notes.txt'")
    refused(relay, attach("x.pdf", b"\x7fELF\x02\x01\x01" + bytes(64)), r"executable content")
    accepted(relay, attach("report.pdf", b"%PDF-1.4\n" + TEXT, "application/pdf"))
    accepted(relay, attach("exercise.txt", TEXT, "text/plain"))  # "exe" only as an extension
    # text that starts with "MZ" is no DOS header (it has no NUL)
    accepted(relay, attach("cars.txt", b"MZ Motors price list\n" + TEXT, "text/plain"))


def test_hidden_names(relay) -> None:  # type: ignore[no-untyped-def]
    encoded = base64.b64encode("Rëchnung.exe".encode()).decode()
    refused(relay, message(f'filename="=?UTF-8?B?{encoded}?="', TEXT), r"rëchnung.exe")
    quoted = urllib.parse.quote("facture.scr")
    refused(relay, message(f"filename*=UTF-8''{quoted}", TEXT), r"facture.scr")
    # RFC 2231 continuations: "inv" "oice.vbs"
    refused(relay, message('filename*0="inv"; filename*1="oice.vbs"', TEXT), r"invoice.vbs")
    rtlo = urllib.parse.quote("invoice\u202egnp.js")  # shows as "invoicesj.png"
    refused(relay, message(f"filename*=UTF-8''{rtlo}", TEXT), r"bidirectional override")
    refused(relay, message('filename="evil.exe."', TEXT), r"evil.exe")
    refused(relay, message('filename="evil.exe . . "', TEXT), r"evil.exe")
    refused(relay, message('filename="EVIL.EXE"', TEXT), r"evil.exe")
    fullwidth = urllib.parse.quote("setup.\uff45\uff58\uff45")  # NFKC: setup.exe
    refused(relay, message(f"filename*=UTF-8''{fullwidth}", TEXT), r"setup.exe")


def test_zips(relay) -> None:  # type: ignore[no-untyped-def]
    refused(relay, attach("docs.zip", zipped({"readme.txt": TEXT, "tool.exe": TEXT})),
            r"banned file name 'tool.exe'")
    # by content inside the zip, the member named as a document
    refused(relay, attach("docs.zip", zipped({"invoice.pdf": b"MZ" + bytes(200)})),
            r"executable content in 'invoice.pdf'")
    refused(relay, attach("docs.zip", nested(3, {"deep/run.bat": TEXT})),
            r"level1.zip/level0.zip/deep/run.bat")
    refused(relay, attach("docs.zip", nested(6, {"readme.txt": TEXT})), r"nested too deep")
    # a zip named as something else is found by its content
    refused(relay, attach("photo.jpg", zipped({"x.scr": TEXT})), r"x.scr")
    accepted(relay, attach("docs.zip", nested(3, {"readme.txt": TEXT})))


def test_zip_bomb_and_many_attachments(relay) -> None:  # type: ignore[no-untyped-def]
    # a 1 GB member inside a zip inside a zip: read by directory and eight bytes, never whole
    bomb = zipped({"bomb.zip": one_member_bomb(), "run.cmd": TEXT})
    refused(relay, attach("archive.zip", bomb), r"bomb.zip|run.cmd")
    # 10,000 attachments, the .exe last: past the MIME parser's leaf limit, judged by name
    parts = "".join(f"--b1\nContent-Type: text/plain\nContent-Disposition: attachment; "
                    f'filename="n{i}.txt"\n\nx\n' for i in range(9_999))
    many = crlf("From: a@sender.test\nTo: bob@example.org\nSubject: many\nMIME-Version: 1.0\n"
                'Content-Type: multipart/mixed; boundary="b1"\n\n' + parts
                + '--b1\nContent-Type: text/plain\nContent-Disposition: attachment; '
                'filename="last.exe"\n\nx\n--b1--\n')
    refused(relay, many, r"last.exe")


def test_per_domain_lists(relay) -> None:  # type: ignore[no-untyped-def]
    tool = attach("tool.exe", TEXT)  # a name only: nothing executable in it
    refused(relay, tool, r"tool.exe")  # example.org: the global list
    accepted(relay, tool, rcpts=("carol@example.net",))  # example.net bans only zip
    refused(relay, attach("docs.zip", zipped({"a.txt": TEXT})), r"docs.zip",
            rcpts=("carol@example.net",))
    # the union for a message to both domains
    refused(relay, tool, r"tool.exe", rcpts=("carol@example.net", "bob@example.org"))
    # executable content is refused for every domain that has a list
    refused(relay, attach("tool.dat", b"MZ" + bytes(100)), r"executable content",
            rcpts=("carol@example.net",))


def test_tars_and_gzips(relay) -> None:  # type: ignore[no-untyped-def]
    refused(relay, attach("docs.tar", tarred([("a.txt", TEXT), ("b/run.exe", TEXT)], gz=False)),
            r"banned file name 'b/run.exe'")
    # names as written, never extracted: traversal and absolute paths by their last part
    refused(relay, attach("docs.tar.gz", tarred([("../../Startup/run.bat", TEXT)])),
            r"run.bat")
    refused(relay, attach("docs.tgz", tarred([("/etc/x.vbs", TEXT)])), r"x.vbs")
    refused(relay, attach("docs.tar.gz", tarred([("invoice.pdf", b"MZ" + bytes(200))])),
            r"executable content in 'invoice.pdf'")
    refused(relay, attach("photo.jpg", tarred([("x.scr", TEXT)])), r"x.scr")  # by content
    # a lone gzip: the name in its header, else the attachment's less .gz; and its content
    refused(relay, attach("invoice.pdf.gz", gzipped(TEXT, "invoice.exe")), r"invoice.exe")
    refused(relay, attach("tool.exe.gz", gzipped(TEXT)), r"tool.exe")
    refused(relay, attach("data.gz", gzipped(b"\x7fELF\x02\x01\x01" + bytes(64))),
            r"executable content")
    accepted(relay, attach("docs.tar.gz", tarred([("a.txt", TEXT), ("../b/c.pdf", TEXT)])))
    accepted(relay, attach("notes.txt.gz", gzipped(TEXT, "notes.txt")))


def test_hostile_tars(relay) -> None:  # type: ignore[no-untyped-def]
    # a gzip bomb: 200 MB of zeros after the .exe; 4 MB are inflated, the .exe is listed
    refused(relay, attach("backup.tar.gz", tarred([("x.exe", TEXT), ("zeros", bytes(200 << 20))])),
            r"x.exe")
    # 20,000 empty members: 2,000 headers are read, the rest is clamd's (a .exe past them
    # is not judged here), and the relay answers
    many = [(f"f{i}.txt", b"") for i in range(20_000)]
    accepted(relay, attach("many.tar.gz", tarred([*many, ("late.exe", TEXT)])))
    refused(relay, attach("many.tar.gz", tarred([*many[:1500], ("early.exe", TEXT)])),
            r"early.exe")
    # broken: a tar cut short lists what came before the cut; garbage after gzip's magic
    cut = tarred([("a.exe", TEXT), ("b.txt", TEXT * 50)], gz=False)[:1200]
    refused(relay, attach("cut.tar", cut), r"a.exe")
    accepted(relay, attach("junk.gz", b"\x1f\x8b" + bytes(500)))
