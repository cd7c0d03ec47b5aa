"""A loopback reverse proxy in front of one sandbox API server that loses answers on purpose.

Issue 14 asks what happens when a pod create reaches the API server but its answer never
reaches the client: the pod exists, the provider does not know it. Stopping the apiserver
cannot produce that (the create then fails before it is stored); a proxy can: it forwards
the create, reads the API server's answer, and resets the client's connection instead of
passing the answer on. The provider sees exactly what a lost answer looks like on the wire.

How authentication gets through: the proxy terminates TLS with the sandbox's own serving
certificate (``pki/serving.crt``, issued for 127.0.0.1 by the sandbox CA, which every
kubeconfig context already trusts) and opens its own TLS connection to the API server,
trusting the same CA. Request headers are forwarded unchanged, so a bearer token (the
contexts ``ORG@CLUSTER`` and ``CLUSTER-operator``, which are all the provider uses) reaches
the API server as the client sent it. A client certificate cannot be forwarded over a new
TLS connection: the admin context through the proxy would arrive anonymous (HTTP 401/403).
That is deliberate: the test's own observers (``tests.helpers.podwatch``) read the real
API servers with the original kubeconfig, never through the fault they observe.

Answers are streamed chunk by chunk as they come, so watches work through the
proxy; upgrades (exec, port-forward) are not supported (the provider uses none).

Faults (thread-safe switches; the proxy runs its own event loop in a thread, so it keeps
answering whatever the test's or the provider's loop is doing):

- ``drop_next_create_response(path_regex)``: the next POST whose path matches is forwarded,
  its answer read in full and recorded, and the client's connection reset (TCP RST) without
  it. With ``then_blackout=True`` the proxy also stops answering at that very moment, so the
  client's read-back gets no answer either.
- ``blackout()`` / ``restore()``: while blacked out, every connection is reset (open watch
  streams and keep-alive connections too; new requests as they arrive): the cluster does
  not answer, as far as the client can tell. The listening port stays open; a reset is
  what a lost connection looks like, and it does not race a restart of the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself for the new connection.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length"}
POD_CREATE = r"^/api/v1/namespaces/[^/]+/pods$"


@dataclass(frozen=True)
class Exchange:
    """One request the proxy saw, and what the API server answered."""

    at: float  # time.time() when the answer's status came back (or the request was reset)
    method: str
    path: str
    status: int  # 0: reset in a blackout, never forwarded
    dropped: bool = False  # the client never got this answer
    body: bytes = b""  # kept for dropped answers only (the test reads the pod it made)


@dataclass
class _Rule:
    path: re.Pattern[str]
    then_blackout: bool


@dataclass
class FaultProxy:
    """``with FaultProxy(upstream, pki) as proxy:`` serves ``proxy.url`` until the block ends."""

    upstream: str  # https://127.0.0.1:PORT of the real API server
    pki: Path  # the sandbox's pki dir (ca.crt, serving.crt, serving.key)
    exchanges: list[Exchange] = field(default_factory=list)
    resets: int = 0  # connections reset on purpose (drops and blackouts)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rule: _Rule | None = None
    _down: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _failed: list[BaseException] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- the switches (any thread) -------------------------------------------------------------
    def drop_next_create_response(self, path_regex: str = POD_CREATE, *,
                                  then_blackout: bool = False) -> None:
        """Arm once: the next matching POST is stored upstream but its answer is lost."""
        with self._lock:
            self._rule = _Rule(re.compile(path_regex), then_blackout)

    def blackout(self) -> None:
        """Stop answering: cut every open connection and each new request."""
        with self._lock:
            self._down = True
        self._call(self._reset_all)

    def restore(self) -> None:
        with self._lock:
            self._down = False

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down

    def dropped(self) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.dropped]

    def forwarded(self, method: str, path_regex: str) -> list[Exchange]:
        """Requests that reached the API server (their answer may have been dropped)."""
        return [e for e in self._matching(method, path_regex) if e.status]

    def refused(self, method: str, path_regex: str) -> list[Exchange]:
        """Requests reset in a blackout: the API server never saw them."""
        return [e for e in self._matching(method, path_regex) if not e.status]

    def _matching(self, method: str, path_regex: str) -> list[Exchange]:
        pattern = re.compile(path_regex)
        with self._lock:
            return [e for e in self.exchanges if e.method == method and pattern.search(e.path)]

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._failed:
            raise RuntimeError(f"fault proxy did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(15)

    def _call(self, fn) -> None:
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(fn(), self._loop).result(10)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__
            self._failed.append(exc)
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._stop())
            loop.close()

    async def _start(self) -> None:
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(self.pki / "serving.crt", self.pki / "serving.key")
        upstream = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a cut client connection ends its handler, and so the upstream
        # request (a watch through the proxy must not outlive its client).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=2, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=serving)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._reset_all()  # open watch streams must not hold the shutdown up
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    # -- forwarding ----------------------------------------------------------------------------
    def _decide(self, request: web.Request) -> tuple[bool, _Rule | None]:
        """(reset now, drop rule taken by this request): one decision under the lock."""
        with self._lock:
            if self._down:
                return True, None
            rule = self._rule
            if rule is not None and request.method == "POST" and rule.path.search(request.path):
                self._rule = None
                return False, rule
            return False, None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        reset, drop = self._decide(request)
        if reset:
            with self._lock:
                self.exchanges.append(Exchange(time.time(), request.method, request.path, 0))
            return self._reset(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        assert self._session is not None
        try:
            async with self._session.request(request.method, self.upstream + request.path_qs,
                                             headers=headers, data=body or None,
                                             allow_redirects=False) as up:
                return await self._answer(request, up, drop)
        except (aiohttp.ClientError, OSError):  # the API server itself did not answer
            return self._reset(request)

    async def _answer(self, request: web.Request, up: aiohttp.ClientResponse,
                      drop: _Rule | None) -> web.StreamResponse:
        """Relay the API server's answer, or (a drop) read it and reset the client."""
        if drop is not None:
            answer = await up.read()  # the API server has answered: now lose it
            with self._lock:
                self.exchanges.append(Exchange(time.time(), request.method, request.path,
                                               up.status, dropped=True, body=answer))
                self._down = self._down or drop.then_blackout
            if drop.then_blackout:
                await self._reset_all()
            return self._reset(request)
        with self._lock:
            self.exchanges.append(Exchange(time.time(), request.method, request.path,
                                           up.status))
        return await self._relay(request, up)

    async def _relay(self, request: web.Request,
                     up: aiohttp.ClientResponse) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for key, value in up.headers.items():
            if key.lower() not in _HOP:
                resp.headers.add(key, value)
        if up.content_length is not None:
            resp.content_length = up.content_length
        try:
            await resp.prepare(request)
            async for chunk in up.content.iter_any():  # a watch: each event as it comes
                if self.down:
                    return self._reset(request)
                await resp.write(chunk)
            await resp.write_eof()
        except ConnectionError:  # the client went away, or a blackout cut it
            _abort(request.transport)
        return resp

    def _reset(self, request: web.Request) -> web.StreamResponse:
        """Reset the client's connection: no answer, as a lost one looks on the wire."""
        with self._lock:
            self.resets += 1
        _abort(request.transport)
        return web.Response()  # never sent: aiohttp sees the closed transport and drops it

    async def _reset_all(self) -> None:
        """Every open connection (streams and idle keep-alives) is cut at once."""
        server = self._runner.server if self._runner is not None else None
        for handler in list(server.connections if server is not None else ()):
            with self._lock:
                self.resets += 1
            _abort(handler.transport)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:  # SO_LINGER 0: close sends RST, not FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]
