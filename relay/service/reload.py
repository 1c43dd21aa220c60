"""What a SIGHUP may change in a running relay, and what only a restart can.

`plan(running, loaded)` compares two configurations key by key and returns the one to run
with: the loaded file, except that every key in RESTART_ONLY keeps its running value (the
relay holds it in something built once: a bound socket, an open store, a spool, a task's
timer). The relay then rebuilds what the rest feeds (relay/service/server.py Relay.reload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from relay.config import Config

# Dotted keys (a whole section when it has no dot) that a reload does not change.
RESTART_ONLY: tuple[str, ...] = (
    "relay.node",          # written into every event, block and DSN
    "relay.hostname",      # the greeting, Received: lines, delivery's EHLO and DSNs
    "relay.listen",        # bound sockets
    "relay.spool_dir",     # the spool the delivery queue and open sessions write to
    "relay.state_dir",     # where spool_dir and a SQLite store.url were resolved at start
    "store",               # the engine, the event writer, the polling intervals, ipv6_prefix
    "delivery",            # the scheduler's queue, connections and timers
    "metrics",             # the bound /metrics endpoint
    "retention",           # the prune task's interval
    "scoring.enabled",     # which tasks run and what sees each event
    "scoring.interval",    # the scoring task's interval
)


@dataclass(frozen=True)
class Plan:
    config: Config          # the configuration to run with
    changed: list[str]      # keys applied
    kept: list[str]         # keys changed in the file that keep their running value


def plan(running: Config, loaded: Config) -> Plan:
    changed = differences(running, loaded)
    kept = [key for key in changed if restart_only(key)]
    config = loaded
    for key in RESTART_ONLY:
        if any(k == key or k.startswith(key + ".") for k in kept):
            config = _replace(config, key.split("."), _get(running, key.split(".")))
    return Plan(config, [k for k in changed if k not in kept], kept)


def restart_only(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESTART_ONLY)


def differences(old: Config, new: Config) -> list[str]:
    """The dotted keys whose values differ (a key present on one side only counts)."""
    out: list[str] = []
    _diff(old.model_dump(), new.model_dump(), "", out)
    return out


def _diff(old: Any, new: Any, prefix: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(name)
            else:
                _diff(old[key], new[key], name, out)
    elif old != new:
        out.append(prefix)


def _get(model: Any, path: list[str]) -> Any:
    for part in path:
        model = getattr(model, part)
    return model


def _replace(model: BaseModel, path: list[str], value: Any) -> Any:
    head, *rest = path
    if not rest:
        return model.model_copy(update={head: value})
    return model.model_copy(update={head: _replace(getattr(model, head), rest, value)})
