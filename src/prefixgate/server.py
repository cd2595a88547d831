"""Run the gateway: the embedded runtime when no upstream is set, then uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import resource
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import click
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOG_LEVELS as UVICORN_LEVELS

from prefixgate.app.gateway import create_app
from prefixgate.app.saved import SavedPrefixes
from prefixgate.config import Settings
from prefixgate.connections import protocol_class
from prefixgate.store.audit import AuditSink
from prefixgate.store.capture import CaptureLog
from prefixgate.store.sinks import AuditLogError, open_audit
from prefixgate.store.state import StateStore

log = logging.getLogger("prefixgate")
KEEP_ALIVE_S = 30
STOPPING = "the gateway is shutting down"
SPARE_FILES = 256  # descriptors beyond max_connections: upstream sockets, the audit log


def run(settings: Settings, *, log_level: str = "info", runtime_args: Sequence[str] = ()) -> None:
    """Serve until interrupted; stop the embedded runtime, if any, on the way out.

    ``runtime_args``: more llama-server arguments for the bundled runtime (``prefixgate
    claude`` biases the demo model's end-of-turn token, launcher.py)."""
    # uvicorn's names, "trace" (below debug) included, which logging alone lacks
    logging.basicConfig(
        level=UVICORN_LEVELS[log_level.lower()],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with
    # the handler it found at start. With Python's default that kills the
    # process on the spot and the bundled runtime outlives us; with this one
    # a SIGTERM before uvicorn runs unwinds the stack below (which stops the
    # runtime), and the one re-raised after a graceful drain lets run() return
    # (exit status 0), unwinding it too.
    server: DrainingServer | None = None

    def on_sigterm(signum: int, frame: object) -> None:
        if server is not None and server.drained:
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        prefixes = None
        if settings.embedded:
            url, cache, prefixes = _start_embedded(stack, settings, tuple(runtime_args))
            settings = settings.with_upstream(url, cache=cache)
        audit = _open_audit(settings)
        app = create_app(
            settings,
            audit=audit,
            capture=_open_capture(settings.record_path),
            state=_open_state(settings.state_url),
            prefixes=prefixes,
        )
        _log_start(settings)
        _raise_file_limit(settings.max_connections + SPARE_FILES)
        server = DrainingServer(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                # uvicorn's protocol, with a deadline on request heads and caps on
                # connections in all and per client address (connections.py)
                http=protocol_class(settings),
                # no WebSocket routes: an upgrade is answered as plain HTTP (an
                # upgraded connection would leave the protocol that counts it)
                ws="none",
                log_level=log_level,
                access_log=False,
                timeout_graceful_shutdown=math.ceil(settings.shutdown_grace) + 5,
                # uvicorn's own cap on a request head (16 KiB by default) answers
                # in plain text: keep it above ours, which answers 431 naming it
                h11_max_incomplete_event_size=settings.max_header_bytes + 16 * 1024,
                # Longer than clients keep idle connections (httpx and the Python
                # SDKs: 5 s, uvicorn's own default): with equal timeouts a client
                # reuses a connection just as the server closes it (a ReadError
                # with no status, seen under load).
                timeout_keep_alive=KEEP_ALIVE_S,
                # X-Forwarded-For rewrites the client's address only when the
                # operator says a proxy of theirs sets it (server.trust_forwarded)
                proxy_headers=settings.trust_forwarded,
            ),
            grace=settings.shutdown_grace,
            on_grace_over=functools.partial(abort_streams, app),
        )
        # uvicorn re-raises a SIGINT it drained after (as uvicorn.run does, the
        # KeyboardInterrupt is the end of a clean stop, not an error)
        with contextlib.suppress(KeyboardInterrupt):
            server.run()


def _log_start(settings: Settings) -> None:
    """Where it listens, where its audit goes, and each upstream, at start."""
    log.info("prefixgate listening on http://%s:%d", settings.host, settings.port)
    log.info("audit log: %s", settings.audit_path or "in memory only")
    if settings.record_path:
        log.info("recording every request to %s", settings.record_path)
    for name, up in settings.upstreams.items():
        where = up.url if len(up.urls) == 1 else f"{len(up.urls)} replicas ({up.routing})"
        log.info("upstream %s: %s (policy %s)", name, where, up.policy.value)
    if settings.state_url:
        log.info("routing state shared through %s", _redacted(settings.state_url))


class DrainingServer(uvicorn.Server):
    """uvicorn, stopping gracefully: on SIGTERM (or SIGINT) it refuses new
    connections at once and lets the requests under way finish; streams still
    running after ``grace`` seconds are ended by ``on_grace_over`` (with an
    ``error`` event); then the app's lifespan shutdown commits the audit log.

    uvicorn cancels whatever still runs ``timeout_graceful_shutdown`` seconds
    (set it a little above ``grace``) after the drain began.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        grace: float,
        on_grace_over: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(config)
        self.grace = grace
        self.on_grace_over = on_grace_over
        self.drained = False  # the graceful shutdown has run to its end

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = asyncio.get_running_loop().create_task(self._end_streams_after_grace())
        try:
            await super().shutdown(sockets=sockets)
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            self.drained = True

    async def _end_streams_after_grace(self) -> None:
        await asyncio.sleep(max(self.grace, 0.0))
        log.warning("shutdown grace of %gs is over: ending the streams under way", self.grace)
        try:
            await self.on_grace_over()
        except Exception:
            log.exception("ending the streams under way failed")


async def abort_streams(app: Starlette, message: str = STOPPING) -> None:
    """End every stream under way in ``app`` with an ``error`` event saying ``message``."""
    streams = getattr(app.state.proxy, "streams", None)
    if streams is not None:
        await streams.abort(message)


def _raise_file_limit(wanted: int) -> None:
    """Let the process open ``wanted`` descriptors, as far as its hard limit allows
    (many systems start services with a soft limit of 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open files are limited to %d: fewer than server.max_connections (%d) "
            "connections can be held",
            target,
            wanted - SPARE_FILES,
        )


def _open_audit(settings: Settings) -> AuditSink:
    """The sink ``settings.audit_path`` names (``store.sinks.open_audit``)."""
    try:
        return open_audit(settings.audit_path, capture_bodies=settings.capture_bodies)
    except AuditLogError as exc:
        raise click.ClickException(str(exc)) from None


def _open_state(url: str | None) -> StateStore | None:
    if not url:
        return None
    from prefixgate.store.state import RedisState

    try:
        return RedisState(url)
    except ImportError:
        raise click.ClickException(
            "server.state_url needs the redis package: pip install 'prefixgate[redis]'"
        ) from None
    except ValueError as exc:
        raise click.ClickException(f"cannot use the state URL: {exc}") from None


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _open_capture(path: str | None) -> CaptureLog | None:
    if not path:
        return None
    try:
        return CaptureLog(path)
    except OSError as exc:
        raise click.ClickException(f"cannot open the capture file {path}: {exc.strerror}") from None


def _start_embedded(
    stack: contextlib.ExitStack, settings: Settings, extra_args: tuple[str, ...] = ()
) -> tuple[str, dict[str, int], SavedPrefixes | None]:
    """The bundled runtime started: its URL, what it can hold (its slots and its
    RAM prompt cache in tokens, for the expected cached tokens), and its saved
    prefixes (None when ``server.saved_prefix_bytes`` is 0 or its kind is not
    anthropic)."""
    from prefixgate.core.oracle import ram_cache_tokens
    from prefixgate.runtime.local import (
        LocalRuntime,
        RuntimeMissing,
        default_spec,
        saved_prefix_dir,
    )

    saving = settings.saved_prefix_bytes > 0 and settings.upstream_kind == "anthropic"
    if settings.saved_prefix_bytes > 0 and not saving:
        log.info("saved prefixes are off: they need the anthropic kind")
    try:
        spec = default_spec(
            slot_save_path=saved_prefix_dir() if saving else None, extra_args=extra_args
        )
    except RuntimeMissing as exc:
        raise click.ClickException(
            f"no upstream configured and the bundled runtime is not installed.\n{exc}\n"
            "Or point prefixgate at a running server: prefixgate serve --upstream URL"
        ) from None
    runtime = LocalRuntime(spec)
    log.info("starting the bundled llama-server (model %s)", spec.model.name)
    runtime.start()
    stack.callback(runtime.stop)
    log.info("bundled runtime ready at %s", runtime.base_url)
    cache = {"cache_slots": spec.slots, "cache_tokens": ram_cache_tokens(spec.cache_ram_mib)}
    prefixes = None
    if spec.slot_save_path is not None:
        from prefixgate.runtime.prefixes import PrefixStore

        store = PrefixStore(spec.slot_save_path, settings.saved_prefix_bytes)
        prefixes = SavedPrefixes(runtime.base_url, store, spec.model, runtime)
        log.info(
            "saved prefixes: %s (%d files, %.1f of %.1f GiB)",
            spec.slot_save_path,
            len(store.entries()),
            store.total / 2**30,
            store.cap / 2**30,
        )
    return runtime.base_url, cache, prefixes
