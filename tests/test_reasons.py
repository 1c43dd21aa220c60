"""One list of event reasons (relay/reasons.py): every reason the relay and the filters write
is in it, and everything that takes a reason from the operator (`[scoring.weights]`,
`report hosts --reason`, the web API's `reason`) takes exactly that list.

The filters import nothing from relay, so they write plain strings; the reasons written are
found by reading the code: every string given as the reason of a Verdict, an EventRecord
or a function that passes its own `reason` on to one, and, for the few reasons made at run
time, by running the code that makes them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from filters.failure import FailurePolicy
from relay.auth.check import AuthReport
from relay.auth.dmarc import DmarcResult
from relay.auth.verdicts import DkimResult, SpfResult
from relay.config.limits import LimitsConfig
from relay.config.scoring import DEFAULT_WEIGHTS, ScoringConfig
from relay.reasons import Reason
from relay.smtp import replies
from relay.smtp.error_limits import SessionErrors

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("relay", "filters")
# callee name -> index of the reason among its positional arguments (`reason=` also counts)
EMITTERS = {"Verdict": 3, "reject": 2, "tempfail": 2, "accept": 2, "EventRecord": -1,
            "replace": -1}
# Where a reason is made at run time rather than written down; each is run below.
# (filters/failure.py's f"{check}_error" / f"{check}_unscanned" defaults pass through its
# `reason` parameter, so the scan follows its callers; made_at_run_time runs them too.)
MADE_AT_RUN_TIME = {
    ("relay/smtp/handler.py", "push"),  # replies.classify's reason for aiosmtpd's replies
    ("relay/smtp/handler.py", "_check_errors"),  # SessionErrors.cut_off()
    ("relay/smtp/handler.py", "_auth_findings"),  # AuthReport.findings()
}


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def _reason_arg(call: ast.Call, index: int) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == "reason":
            return kw.value
    return call.args[index] if 0 <= index < len(call.args) else None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return params[1:] if params[:1] in (["self"], ["cls"]) else params


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str, list[str]]]:
    """Every call with the function it is in ("" and no parameters at module level)."""
    def walk(node: ast.AST, fn: str, params: list[str]) -> Iterator[tuple[ast.Call, str,
                                                                         list[str]]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from walk(child, child.name, _params(child))
                continue
            if isinstance(child, ast.Call):
                yield child, fn, params
            yield from walk(child, fn, params)
    yield from walk(tree, "", [])


def _trees() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT)): ast.parse(p.read_text())
            for package in SOURCES for p in sorted((ROOT / package).rglob("*.py"))}


def scan() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(reason -> where it is written, the sites whose reason is made at run time)."""
    trees = _trees()
    emitters = dict(EMITTERS)
    grown = True
    while grown:  # a function handing its own `reason` parameter to an emitter is one too
        grown = False
        for tree in trees.values():
            for call, fn, params in _calls(tree):
                name = _callee(call)
                if name not in emitters or fn in emitters or "reason" not in params:
                    continue
                arg = _reason_arg(call, emitters[name])
                if isinstance(arg, ast.Name) and arg.id == "reason":
                    emitters[fn] = params.index("reason")
                    grown = True
    written: dict[str, set[str]] = {}
    dynamic: set[tuple[str, str]] = set()
    for path, tree in trees.items():
        for call, fn, params in _calls(tree):
            name = _callee(call)
            if name not in emitters:
                continue
            arg = _reason_arg(call, emitters[name])
            for v in [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]:
                if isinstance(v, ast.Constant) and isinstance(v.value, str):
                    written.setdefault(v.value, set()).add(f"{path}:{v.lineno}")
                elif isinstance(v, ast.JoinedStr) or (
                        isinstance(v, ast.Name) and v.id not in params):
                    dynamic.add((path, fn))
    return written, dynamic


def filter_names() -> set[str]:
    """The `name` of every filter class (a class with a `check` and a `name = "..."`)."""
    names = set()
    for path, tree in _trees().items():
        if not path.startswith("filters/"):
            continue
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            body = {getattr(n, "name", None) for n in cls.body}
            for n in cls.body:
                target = n.targets[0] if isinstance(n, ast.Assign) else \
                    n.target if isinstance(n, ast.AnnAssign) else None
                if (isinstance(target, ast.Name) and target.id == "name" and "check" in body
                        and isinstance(n.value, ast.Constant)):
                    names.add(n.value.value)
    return names


def made_at_run_time() -> set[str]:
    made = {r for *_, r in replies.KNOWN if r is not None}
    names = filter_names()
    assert {"recipients", "dnsbl", "clamav", "spamassassin"} <= names
    for name in names:
        policy = FailurePolicy(name)
        made.add(policy.tempfail("down").reason)
        if name in ("clamav", "spamassassin"):  # the DATA checks: only they mark a message
            made.add(policy.unscanned("down").reason)
    limits = LimitsConfig(smtpd_hard_error_limit=1, smtpd_junk_command_limit=1)
    errors = SessionErrors(limits)
    errors.reply("550 no")
    made.add(errors.cut_off())  # type: ignore[arg-type]
    for _ in range(3):
        errors.junk_command()
    made.add(errors.cut_off())  # type: ignore[arg-type]
    for spf, dkim, policy in (("fail", "fail", "reject"), ("softfail", "pass", "quarantine")):
        report = AuthReport(client="192.0.2.1", mail_from="a@b.example",
                            spf=SpfResult(spf, "mailfrom", "b.example"),  # type: ignore[arg-type]
                            dmarc=DmarcResult("fail", "b.example", policy, policy),  # type: ignore[arg-type]
                            dkim=(DkimResult(dkim, "b.example", "s"),))  # type: ignore[arg-type]
        made.update(report.findings())
    return made


def test_every_reason_written_is_a_reason() -> None:
    written, dynamic = scan()
    # the scan sees the reasons it must: in filters, in the relay, through wrappers
    assert {"virus", "unknown_rcpt", "rate_limit", "delivered", "spam_tagged"} <= set(written)
    unknown = {r: sorted(w) for r, w in written.items() if r not in list(Reason)}
    assert unknown == {}, "add these to relay/reasons.py"
    assert dynamic == MADE_AT_RUN_TIME, "a reason made at run time: run it in made_at_run_time"
    made = made_at_run_time()
    assert {"clamav_error", "dnsbl_error", "recipients_error", "error_limit", "junk_limit",
            "size", "protocol"} <= made
    assert made - set(Reason) == set()


def test_every_reason_is_written_somewhere() -> None:
    """The list has no reason nothing writes (a stale one would be offered by --reason)."""
    written, _ = scan()
    assert set(Reason) - set(written) - made_at_run_time() == set()


def test_weights_are_reasons() -> None:
    assert set(DEFAULT_WEIGHTS) <= set(Reason)
    assert ScoringConfig(weights={"rate_limit": 4}).all_weights()["rate_limit"] == 4


def test_readme_lists_the_reasons() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("The event reasons (one list, `relay/reasons.py`")
    listed = re.findall(r"`([a-z_]+)`", text[text.index(":", text.index(")", start)):
                                            text.index(".\n", start)])
    assert listed == [r.value for r in Reason]
