"""The alias table: import formats, malformed lines, bulk imports, and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.store.aliases import AliasBook, Entry, Problem, parse
from tests.support import floodgate, free_port, write_config

POSTFIX = """\
# hosted users
alice@example.org      alice@mail.example.org
Bob@Example.ORG        bob@mail.example.org,
    bob.backup@mail.example.org
@catchall.test         catch@mail.example.org

nodomain               someone@mail.example.org
broken@                x@y.test
carol@example.net
stranger@not-hosted.test  x@y.test
"""


def test_parse_postfix_map() -> None:
    items = list(parse(POSTFIX.splitlines(True), "postfix"))
    entries = [i for i in items if isinstance(i, Entry)]
    problems = [i for i in items if isinstance(i, Problem)]
    assert [(e.line, e.address) for e in entries] == [
        (2, "alice@example.org"), (3, "Bob@example.org"), (5, "@catchall.test"),
        (10, "stranger@not-hosted.test")]
    assert entries[1].target == "bob@mail.example.org, bob.backup@mail.example.org"
    assert [(p.line, p.message) for p in problems] == [
        (7, "'nodomain' has no domain"), (8, "'broken@' is not a valid address"),
        (9, 'expected "address target"')]


def test_parse_list_and_csv() -> None:
    listed = list(parse(["a@example.org\n", "# c\n", "\n", "b@example.org extra\n",
                         "bad address@\n"], "list"))
    assert isinstance(listed[0], Entry)
    assert [(p.line, p.message) for p in listed[1:]] == [
        (4, "expected one address per line"), (5, "expected one address per line")]
    rows = list(parse(["address,target\n", "a@example.org,x@y.test\n", "b@example.org\n",
                       "c@example.org,x,y\n", "\n", "nope,x\n"], "csv"))
    assert [(r.line, r.address, r.target) for r in rows if isinstance(r, Entry)] == [
        (2, "a@example.org", "x@y.test"), (3, "b@example.org", "")]
    assert [r.line for r in rows if isinstance(r, Problem)] == [4, 6]


def test_unicode_domains_are_stored_as_a_labels() -> None:
    [entry] = parse(["jürgen@Bücher.example\n"], "list")
    assert isinstance(entry, Entry)
    assert entry.address == "jürgen@xn--bcher-kva.example"


def test_alias_book_lookup() -> None:
    book = AliasBook(frozenset({"alice@example.org"}), frozenset({"catchall.test"}),
                     case_sensitive=False, delimiter="+")
    assert book.known("Alice", "example.org")
    assert book.known("alice+x+y", "example.org")
    assert not book.known("alicex", "example.org")
    assert not book.known("+x", "example.org")
    assert book.known("anything", "catchall.test")


@pytest.fixture
def config(tmp_path: Path, store_url: str) -> Path:
    return write_config(tmp_path / "floodgate.toml", store_url=store_url, port=free_port())


def test_cli_import_postfix_reports_lines(config: Path, tmp_path: Path) -> None:
    (tmp_path / "virtual").write_text(POSTFIX)
    proc = floodgate(config, "aliases", "import", "--format", "postfix",
                     str(tmp_path / "virtual"))
    assert proc.stdout.strip() == "added 3, skipped 0 (already present), rejected 4"
    assert "line 7: 'nodomain' has no domain" in proc.stderr
    assert "line 10: domain 'not-hosted.test' is not hosted" in proc.stderr
    again = floodgate(config, "aliases", "import", "--format", "postfix",
                      str(tmp_path / "virtual"))
    assert again.stdout.startswith("added 0, skipped 3 (already present)")
    listed = floodgate(config, "aliases", "list").stdout.splitlines()
    assert listed == ["@catchall.test\tcatch@mail.example.org",
                      "Bob@example.org\tbob@mail.example.org, bob.backup@mail.example.org",
                      "alice@example.org\talice@mail.example.org"]


def test_cli_import_csv_and_list_and_replace(config: Path, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("address,target\nx@example.org,\ny@example.net,t@z.test\n")
    assert floodgate(config, "aliases", "import", "--format", "csv",
                     str(tmp_path / "a.csv")).stdout.startswith("added 2,")
    (tmp_path / "a.txt").write_text("z@example.org\nx@example.org\n")
    proc = floodgate(config, "aliases", "import", "--format", "list", "--replace",
                     str(tmp_path / "a.txt"))
    assert proc.stdout.strip() == \
        "removed 2, added 2, skipped 0 (already present), rejected 0"
    assert floodgate(config, "aliases", "list").stdout.split() == ["x@example.org",
                                                                   "z@example.org"]
    count = floodgate(config, "aliases", "count").stdout
    assert "example.org │ 2" in count


def test_cli_add_remove(config: Path) -> None:
    assert floodgate(config, "aliases", "add", "A@example.org", "b@example.net").stdout \
        .startswith("added 2,")
    bad = floodgate(config, "aliases", "add", "c@elsewhere.test", check=False)
    assert bad.returncode == 1
    assert "domain 'elsewhere.test' is not hosted" in bad.stderr
    assert floodgate(config, "aliases", "remove", "A@EXAMPLE.ORG").stdout == "removed 1\n"
    gone = floodgate(config, "aliases", "remove", "A@example.org", check=False)
    assert (gone.returncode, gone.stderr.strip()) == (1, "not in the table: A@example.org")


def test_cli_import_errors_are_clear(config: Path, tmp_path: Path) -> None:
    missing = floodgate(config, "aliases", "import", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr
    (tmp_path / "latin1").write_bytes(b"j\xfcrgen@example.org\n")
    proc = floodgate(config, "aliases", "import", str(tmp_path / "latin1"), check=False)
    assert "not UTF-8 text" in proc.stderr
    assert "Traceback" not in proc.stderr + missing.stderr


def test_import_100k_lines(config: Path, tmp_path: Path) -> None:
    lines = [f"user{i}@example.org" for i in range(100_000)]
    lines[500] = "broken line here"
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    proc = floodgate(config, "aliases", "import", str(tmp_path / "big.txt"))
    assert proc.stdout.strip() == "added 99999, skipped 0 (already present), rejected 1"
    assert "line 501: expected one address per line" in proc.stderr
    assert "total       │ 99999" in floodgate(config, "aliases", "count").stdout
