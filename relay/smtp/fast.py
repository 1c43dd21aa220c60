"""aiosmtpd's per-connection set-up, paid once per class instead of once per connection.

aiosmtpd 1.4.6 builds its command, hook and AUTH tables in `SMTP.__init__` by introspection
(`dir()`, `inspect.getmembers()`, `inspect.signature()`) for every connection, and defines a
`typing.Protocol` class inside `_getaddr` on every MAIL and RCPT. Under a dictionary attack
(one short session after another) that was a fifth of the relay's CPU. `fast_protocol(cls)`
returns a subclass of `cls` whose `__init__` does the same work from per-class caches and
whose `_getaddr` answers the common `<local@domain>` form without the RFC 5322 parser (any
other form still goes through aiosmtpd's own code). Behaviour is aiosmtpd's; only the cost
differs. Other aiosmtpd versions, and options the relay does not use, take aiosmtpd's own
`__init__`: `protocol_for` says which one the relay serves with, and why (the relay logs it
at start-up and warns when the fast set-up is off).

Everything here copies or replaces aiosmtpd 1.4.6's private state (the attributes
`SMTP.__init__` sets, `_AuthMechAttr`, `_smtp_methods`, `_handle_hooks`, `_auth_methods`,
`_ehlo_hook_ver`, `_enforce_call_limit`, `_getaddr`): pyproject.toml pins aiosmtpd to
WRITTEN_FOR for that reason, and a new version is taken only after reading its
`SMTP.__init__` against this file.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import ssl
from typing import Any, TypeVar, cast

import aiosmtpd
from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, _AuthMechAttr, login_always_fail
from aiosmtpd.smtp import __ident__ as AIOSMTPD_IDENT

WRITTEN_FOR = "1.4.6"  # the aiosmtpd whose SMTP.__init__ and _getaddr this file copies
SUPPORTED = aiosmtpd.__version__ == WRITTEN_FOR

# `<local@domain>` with a dot-atom local part and a plain domain: the form nearly every
# client sends, and one where aiosmtpd's parser is known to return exactly this address.
_SIMPLE_ADDR = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>"
    r"(?=$|[ \t])")

_class_tables: dict[type, tuple[frozenset[str], list[tuple[str, str]]]] = {}
_handler_tables: dict[int, tuple[Any, dict[str, Any], list[tuple[str, str]], str | None]] = {}


def _declined(hostname: str | None, auth_required: bool, auth_require_tls: bool,
              command_call_limit: Any, authenticator: Any, proxy_protocol_timeout: Any,
              auth_exclude_mechanism: Any, loop: Any) -> str | None:
    """Why the fast set-up does not apply (another aiosmtpd, or an option it does not
    copy), or None. Asked per connection and, by `protocol_for`, once at start-up."""
    if (SUPPORTED and hostname and not auth_required and auth_require_tls
            and command_call_limit is None and authenticator is None
            and proxy_protocol_timeout is None and not auth_exclude_mechanism
            and loop is None):
        return None  # the relay's case, per connection: no list built
    if not SUPPORTED:
        return f"aiosmtpd {aiosmtpd.__version__}, fast set-up written for {WRITTEN_FOR}"
    odd = [name for name, off in (
        ("hostname", not hostname), ("auth_required", auth_required),
        ("auth_require_tls", not auth_require_tls),
        ("command_call_limit", command_call_limit is not None),
        ("authenticator", authenticator is not None),
        ("proxy_protocol_timeout", proxy_protocol_timeout is not None),
        ("auth_exclude_mechanism", bool(auth_exclude_mechanism)),
        ("loop", loop is not None)) if off]
    return f"options it does not copy: {','.join(odd)}" if odd else None


def _auth_names(obj: Any) -> list[tuple[str, str]]:
    return [(getattr(fn, "__auth_mechanism_name__",
                     name.replace("auth_", "").replace("__", "-")), name)
            for name, fn in inspect.getmembers(obj) if name.startswith("auth_")]


class FastSMTPBase(SMTP):
    def __init__(self, handler: Any, *, data_size_limit: int | None = DATA_SIZE_DEFAULT,
                 enable_SMTPUTF8: bool = False, decode_data: bool = False,
                 hostname: str | None = None, ident: str | None = None,
                 tls_context: ssl.SSLContext | None = None, require_starttls: bool = False,
                 timeout: float = 300, auth_required: bool = False,
                 auth_require_tls: bool = True, auth_exclude_mechanism: Any = None,
                 auth_callback: Any = None, command_call_limit: Any = None,
                 authenticator: Any = None, proxy_protocol_timeout: Any = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if _declined(hostname, auth_required, auth_require_tls, command_call_limit,
                     authenticator, proxy_protocol_timeout, auth_exclude_mechanism, loop):
            SMTP.__init__(
                self, handler, data_size_limit=data_size_limit,
                enable_SMTPUTF8=enable_SMTPUTF8, decode_data=decode_data, hostname=hostname,
                ident=ident, tls_context=tls_context, require_starttls=require_starttls,
                timeout=timeout, auth_required=auth_required,
                auth_require_tls=auth_require_tls,
                auth_exclude_mechanism=auth_exclude_mechanism, auth_callback=auth_callback,
                command_call_limit=command_call_limit, authenticator=authenticator,
                proxy_protocol_timeout=proxy_protocol_timeout, loop=loop)
            return
        # What SMTP.__init__ does, in its order, for the options above.
        self.__ident__ = ident or AIOSMTPD_IDENT
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname
        self.tls_context = tls_context
        if tls_context is not None and tls_context.verify_mode not in {
                ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            pass  # aiosmtpd only logs a warning here; it did so for the first connection
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._auth_callback = auth_callback or login_always_fail
        self._authenticator = None
        self._auth_required = False

        cls = type(self)
        tables = _class_tables.get(cls)
        if tables is None:
            smtp_names = frozenset(m[5:] for m in dir(cls) if m.startswith("smtp_"))
            tables = _class_tables[cls] = (smtp_names, _auth_names(cls))
        smtp_names, own_auth = tables
        cached = _handler_tables.get(id(handler))
        if cached is None or cached[0] is not handler:
            hooks = {m.replace("handle_", ""): getattr(handler, m)
                     for m in dir(handler) if m.startswith("handle_")}
            ehlo = hooks.get("EHLO")
            version = None
            if ehlo is not None:
                n = len(inspect.signature(ehlo).parameters)
                if n not in (4, 5):
                    raise RuntimeError("Unsupported EHLO Hook")
                version = "old" if n == 4 else "new"
            cached = (handler, hooks, _auth_names(handler), version)
            _handler_tables[id(handler)] = cached
        _, hooks, handler_auth, self._ehlo_hook_ver = cached
        auth = {mech: _AuthMechAttr(getattr(self, name), True) for mech, name in own_auth}
        for mech, name in handler_auth:
            auth[mech] = _AuthMechAttr(getattr(handler, name), False)
        self._auth_methods = auth
        self._handle_hooks = dict(hooks)
        self._smtp_methods = _Methods(self, smtp_names)
        self._enforce_call_limit = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _SIMPLE_ADDR.match(arg)
        if m is None or (self.local_part_limit
                         and len(m.group(1).rpartition("@")[0]) > self.local_part_limit):
            return super()._getaddr(arg)
        rest = arg[m.end():].lstrip(" \t")  # the parser takes trailing white space too
        if rest.startswith("("):  # ... and comments: leave those to it
            return super()._getaddr(arg)
        return m.group(1), rest


class _Methods:
    """aiosmtpd's `{command: bound smtp_ method}` table, binding on lookup: building it
    bound all seventeen methods for every connection (3% of a dictionary attack's CPU),
    and a session uses four or five. aiosmtpd only calls `get` and `items` (HELP)."""

    __slots__ = ("_names", "_obj")

    def __init__(self, obj: object, names: frozenset[str]):
        self._obj = obj
        self._names = names

    def get(self, command: str, default: Any = None) -> Any:
        if command in self._names:
            return getattr(self._obj, "smtp_" + command)
        return default

    def items(self) -> list[tuple[str, Any]]:
        return [(name, self.get(name)) for name in sorted(self._names)]


_fast: dict[type, type] = {}


S = TypeVar("S", bound=SMTP)


def protocol_for(cls: type[S], **options: Any) -> tuple[type[S], str | None]:
    """The class to serve connections made with `cls(handler, **options)`: the fast one, or
    `cls` itself with the reason the fast set-up is off (for the start-up warning)."""
    why = _declined(options.get("hostname"), options.get("auth_required", False),
                    options.get("auth_require_tls", True), options.get("command_call_limit"),
                    options.get("authenticator"), options.get("proxy_protocol_timeout"),
                    options.get("auth_exclude_mechanism"), options.get("loop"))
    return (cls, why) if why is not None else (cast(type[S], fast_protocol(cls)), None)


def fast_protocol(cls: type[SMTP]) -> type[SMTP]:
    """`cls` with FastSMTPBase between it and aiosmtpd's SMTP (cached per class)."""
    fast = _fast.get(cls)
    if fast is None:
        fast = _fast[cls] = type(cls.__name__, (cls, FastSMTPBase), {
            "__module__": cls.__module__, "__doc__": cls.__doc__})
    return fast
