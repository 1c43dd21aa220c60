"""Regenerate fixtures/clamav/ (the project's signatures) and fixtures/messages/*.eml.

    .venv/bin/python -m tests.make_fixtures

The outputs are committed; this is how they were made. Signatures (no official ClamAV
database is used anywhere, so tests and the demo need no network):

- floodgate.hdb  `Floodgate.Test.ClamExe`: MD5 hash of ClamAV's own test binary clam.exe from
  Debian's clamav-testfiles. Because clamd unpacks zip, tar.gz, mail, uuencode ..., this one
  hash catches every packaging of clam.exe in that package.
- floodgate.ndb  `Floodgate.Test.EICAR`: the EICAR string as a body pattern (matches with or
  without a trailing newline, unlike a hash); `Floodgate.Test.Worm`: the marker in
  WORM_PAYLOAD, the project's own "worm" for outbreak tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIGNATURES = ROOT / "fixtures" / "clamav"
MESSAGES = ROOT / "fixtures" / "messages"
TESTFILES = Path("/usr/share/clamav-testfiles")
SA_EXAMPLES = Path("/usr/share/doc/spamassassin/examples")

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
WORM_MARKER = b"FLOODGATE-TEST-WORM-PAYLOAD"
# A harmless stand-in for a mass-mailer's attachment: an MZ header, the marker, filler.
WORM_PAYLOAD = b"MZ" + bytes(62) + b"This program cannot be run. " + WORM_MARKER + bytes(
    range(256)) * 8
DATE = formatdate(1700000000, localtime=False)

SIG_CLAMEXE = "Floodgate.Test.ClamExe"
SIG_EICAR = "Floodgate.Test.EICAR"
SIG_WORM = "Floodgate.Test.Worm"


def b64(data: bytes) -> str:
    return "\n".join(base64.encodebytes(data).decode("ascii").splitlines())


def uuencode(data: bytes, name: str) -> str:
    lines = [f"begin 644 {name}"]
    for i in range(0, len(data), 45):
        lines.append(binascii.b2a_uu(data[i:i + 45], backtick=True).decode("ascii").rstrip("\n"))
    lines += ["`", "end"]
    return "\n".join(lines)


def headers(subject: str, *, sender: str = "alice@sender.example",
            rcpt: str = "bob@example.org", msgid: str = "") -> str:
    msgid = msgid or hashlib.sha1(subject.encode()).hexdigest()[:16]
    return (f"From: Alice <{sender}>\nTo: <{rcpt}>\nSubject: {subject}\nDate: {DATE}\n"
            f"Message-ID: <{msgid}@sender.example>\nMIME-Version: 1.0\n")


def with_attachment(subject: str, text: str, payload: bytes, filename: str,
                    ctype: str = "application/octet-stream", encoding: str = "base64",
                    boundary: str = "=_floodgate_0001", **kw: str) -> str:
    body = b64(payload) if encoding == "base64" else uuencode(payload, filename)
    return (headers(subject, **kw)
            + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
            + f"This is a multi-part message in MIME format.\n\n--{boundary}\n"
            + "Content-Type: text/plain; charset=us-ascii\n\n"
            + text + "\n\n"
            + f'--{boundary}\nContent-Type: {ctype}; name="{filename}"\n'
            + f"Content-Transfer-Encoding: {encoding}\n"
            + f'Content-Disposition: attachment; filename="{filename}"\n\n'
            + body + f"\n--{boundary}--\n")


def forward(subject: str, inner: str) -> str:
    boundary = "=_floodgate_fwd"
    return (headers(subject)
            + f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
            + f"--{boundary}\nContent-Type: text/plain\n\nForwarding this, see below.\n\n"
            + f"--{boundary}\nContent-Type: message/rfc822\n"
            + 'Content-Disposition: attachment; filename="forwarded.eml"\n\n'
            + inner + f"\n--{boundary}--\n")


CLEAN_TEXT = """Hi Bob,

the minutes from Tuesday's meeting are below. We agreed to move the review of the
mail relay configuration to next week, once the test results are in. Carol will
send the updated schedule.

Thanks,
Alice
"""


def messages() -> dict[str, str]:
    clamexe = (TESTFILES / "clam.exe").read_bytes()
    out = {
        "clean.eml": headers("Minutes of Tuesday's meeting") + "Content-Type: text/plain\n\n"
        + CLEAN_TEXT,
        "eicar.eml": with_attachment("Invoice", "Please see the attached file.", EICAR + b"\n",
                                     "eicar.com"),
        "clam-zip.eml": with_attachment("Your document", "Here is the document.",
                                        (TESTFILES / "clam.zip").read_bytes(), "document.zip",
                                        "application/zip"),
        "clam-targz.eml": with_attachment("Archive", "Here is the archive.",
                                          (TESTFILES / "clam.tar.gz").read_bytes(),
                                          "archive.tar.gz", "application/gzip"),
        "clam-uu.eml": with_attachment("Old school", "uuencoded, like in 1995.", clamexe,
                                       "clam.exe", encoding="x-uuencode"),
        "worm.eml": with_attachment("Mail Transaction Failed",
                                    "The message contains Unicode characters and has been "
                                    "sent as a binary attachment.", WORM_PAYLOAD,
                                    "document.pif"),
        "gtube.eml": headers("Test spam mail (GTUBE)") + "Content-Type: text/plain\n\n"
        + "This is the GTUBE, the\n\tGeneric\n\tTest for\n\tUnsolicited\n\tBulk\n\tEmail\n\n"
        + GTUBE + "\n",
    }
    out["forward-clam-zip.eml"] = forward("Fwd: Your document", out["clam-zip.eml"])
    for name in ("sample-spam.txt", "sample-nonspam.txt"):
        src = SA_EXAMPLES / name
        if src.exists():
            out[name.replace(".txt", ".eml")] = src.read_text(errors="surrogateescape")
    return out


def signatures() -> dict[str, str]:
    clamexe = (TESTFILES / "clam.exe").read_bytes()
    return {
        "floodgate.hdb": f"{hashlib.md5(clamexe).hexdigest()}:{len(clamexe)}:{SIG_CLAMEXE}\n",
        "floodgate.ndb": f"{SIG_EICAR}:0:*:{EICAR.hex()}\n{SIG_WORM}:0:*:{WORM_MARKER.hex()}\n",
    }


def main() -> None:
    SIGNATURES.mkdir(parents=True, exist_ok=True)
    MESSAGES.mkdir(parents=True, exist_ok=True)
    for name, text in signatures().items():
        (SIGNATURES / name).write_text(text)
    for name, text in messages().items():
        (MESSAGES / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        print(MESSAGES / name)


if __name__ == "__main__":
    main()
