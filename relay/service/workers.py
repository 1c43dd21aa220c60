"""`floodgate serve --workers N`: N relay processes on the same listening addresses.

One Python process tops out at one core; a dictionary attack or an outbreak is many small,
independent sessions, so N processes spread them over N cores. Each worker binds every
listen address itself with SO_REUSEPORT and the kernel spreads new connections over the
workers' sockets (by a hash of the client's address and port). Each worker is a whole relay:
its own event loop, alias and block snapshots, filters, verdict caches and event writer (one
store writer per process). They share the store and the spool directory.

The supervisor (the process started as `floodgate serve`) prepares what must be prepared
once (the schema of an empty store, the spool directories and the clean-up of the spool's
`tmp/`), forks the workers, forwards SIGTERM/SIGINT and SIGHUP (reload) to them, restarts a
worker that dies (with the configuration as last reloaded), and exits when all have stopped.
Only worker 0 runs delivery (the delivery scheduler assumes it is alone on its spool; it
picks up the other workers' messages at its next spool scan, `delivery.scan_interval`) and
serves metrics: every worker's, through the files of prometheus-client's multiprocess mode in
a directory the supervisor makes and removes (relay/service/metrics.py).

Caveats: verdict caches and DNSBL caches are per worker (an outbreak's first copy costs one
clamd scan per worker); `delivery.max_spool_messages` is enforced by worker 0 only (the
others still refuse when the disk is nearly full); SO_REUSEPORT lets a second relay started
by the same user bind the same port instead of failing with "address already in use".
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time

from relay.config import Config, ConfigError, load_config
from relay.delivery.spool import Spool
from relay.logs import kv
from relay.service import metrics
from relay.service.reload import plan
from relay.service.server import StartupError, prepare_store
from relay.store.database import make_engine

log = logging.getLogger("floodgate.workers")

STARTUP_FAILED = 3  # a worker's exit status when it could not start (bad listen address ...)
RESTART_DELAY = 1.0
MAX_DELAY = 30.0


def _worker(config: Config, index: int, path: str | None, shared: str | None) -> int:
    """The child side of the fork: a whole relay. Returns the exit status."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # not the supervisor's handler (it would signal the siblings); the relay sets its own
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from relay.service.server import serve

    if shared is not None:
        metrics.use_shared_directory(shared)

    try:
        serve(config, worker=index, path=path)
    except StartupError as e:
        log.error("worker cannot start %s", kv(worker=index, error=str(e)))
        return STARTUP_FAILED
    except KeyboardInterrupt:
        return 0
    except BaseException:
        log.exception("worker failed %s", kv(worker=index))
        return 1
    return 0


def _spawn(config: Config, index: int, path: str | None, shared: str | None) -> int:
    pid = os.fork()
    if pid == 0:  # child
        status = 1
        try:
            status = _worker(config, index, path, shared)
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    log.info("worker started %s", kv(worker=index, pid=pid))
    return pid


def serve_workers(config: Config, n: int, path: str | None = None) -> None:
    """Supervise `n` workers until SIGTERM/SIGINT; raises StartupError if one cannot start.
    `path`: the configuration file each worker reads again on SIGHUP."""
    engine = make_engine(config.store.url)
    try:
        prepare_store(engine)
    finally:
        engine.dispose()  # no connection may cross the fork
    try:
        Spool(config.relay.spool_dir).prepare()
    except OSError as e:
        raise StartupError(f"relay.spool_dir {config.relay.spool_dir}: {e.strerror}") from e

    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reload(signum: int, _frame: object) -> None:
        """Each worker reloads (and logs how it went); a worker restarted later starts
        with what they reloaded, which is checked here the same way."""
        nonlocal config
        if path is not None:
            # a bad file: every worker logs its problems and keeps its configuration
            with contextlib.suppress(ConfigError):
                config = plan(config, load_config(path)).config
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        log.info("reload passed to the workers %s", kv(workers=len(children)))

    # the workers' metric files, when there is an endpoint to serve them
    shared = metrics.shared_directory() if config.metrics.endpoint() is not None else None
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    started: dict[int, float] = {}
    failures: dict[int, int] = {}
    failed_startup: str | None = None
    try:
        for index in range(n):
            children[_spawn(config, index, path, shared)] = index
            started[index] = time.monotonic()
        log.info("supervising %s", kv(workers=n, pid=os.getpid()))
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            if shared is not None:
                metrics.worker_exited(shared, pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                log.info("worker stopped %s", kv(worker=index, pid=pid, status=code))
                continue
            if code == STARTUP_FAILED:
                failed_startup = f"worker {index} could not start (see its log line above)"
                forward(signal.SIGTERM, None)
                continue
            # A crash (or a stray signal): restart, backing off if it keeps dying young.
            young = time.monotonic() - started[index] < 10
            failures[index] = failures.get(index, 0) + 1 if young else 0
            delay = min(MAX_DELAY, RESTART_DELAY * 2 ** failures[index]) if young else 0.0
            log.error("worker died, restarting %s", kv(worker=index, pid=pid, status=code,
                                                      delay=f"{delay:g}s"))
            deadline = time.monotonic() + delay
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if not stopping:
                children[_spawn(config, index, path, shared)] = index
                started[index] = time.monotonic()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if shared is not None and not children:
            metrics.remove_shared_directory(shared)
    if failed_startup:
        raise StartupError(failed_startup)
    log.info("all workers stopped")
