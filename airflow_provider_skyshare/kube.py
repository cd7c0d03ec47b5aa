"""Thin async calls to one cluster's API, in raw JSON (the form outcomes/snapshot read).

Raw JSON avoids the client's model deserialisation (slow, and it drops unknown fields)
and keeps watch events byte-for-byte what the API server sent.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp.http_exceptions

from airflow_provider_skyshare import clients
from airflow_provider_skyshare.fleet import Cluster


class KubeError(Exception):
    """An API error with the HTTP status and the server's own message."""

    def __init__(self, cluster: str, status: int, reason: str, message: str) -> None:
        self.cluster, self.status, self.reason, self.message = cluster, status, reason, message
        super().__init__(f"{cluster}: HTTP {status} {reason}: {message}")

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def no_answer(self) -> bool:
        """No usable answer, for a read or a delete: none at all, the server failing (5xx)
        or shedding load (429). Ask again later; never a reason to fail the task."""
        return self.status == 0 or self.status >= 500 or self.status == 429


# What "the cluster did not answer" looks like; anything else is a bug and propagates.
TRANSPORT_ERRORS = (aiohttp.ClientError, aiohttp.http_exceptions.HttpProcessingError,
                    asyncio.TimeoutError, OSError)


# Requests this process has sent, by (cluster, verb, resource): the client's own count, which
# the scale benchmark reports beside the apiservers' (whose other clients it cannot tell apart).
REQUESTS: collections.Counter[tuple[str, str, str]] = collections.Counter()


def _count(cluster: str, verb: str, path: str) -> None:
    parts = path.strip("/").split("/")  # api/v1[/namespaces/NS]/RESOURCE[/NAME[/SUB]]
    at = parts.index("namespaces") + 2 if "namespaces" in parts[:-2] else (
        2 if parts[0] == "api" else 3)
    REQUESTS[(cluster, verb, parts[at] if at < len(parts) else parts[-1])] += 1


def _unreachable(cluster: Cluster, exc: BaseException) -> KubeError:
    text = str(exc) or type(exc).__name__
    return KubeError(cluster.name, 0, "Unreachable", text)


async def _authorized(api: Any, headers: dict[str, str]) -> dict[str, str]:
    """The request's headers with the credential's bearer token, if it has one (a
    ServiceAccount token, a connection's token, an exec plugin's: refreshed by the client's
    own hook). Client certificates travel in the TLS handshake instead."""
    bearer = (await api.configuration.auth_settings()).get("BearerToken") or {}
    if bearer.get("value"):
        return {**headers, bearer["key"]: bearer["value"]}
    return headers


async def _call(cluster: Cluster, method: str, path: str, query: list[tuple[str, Any]],
                body: Any, timeout: float | None, headers: dict[str, str]) -> bytes:
    """One round trip: the body of a 2xx answer, else KubeError (status 0: no answer)."""
    _count(cluster.name, method, path)
    try:
        api = await clients.async_api(cluster)
        resp = await api.rest_client.request(
            method, api.configuration.host + path, query_params=query,
            headers=await _authorized(api, headers),
            body=body, _preload_content=False, _request_timeout=timeout)
        try:
            data = await resp.read()
        finally:
            resp.release()
    except TRANSPORT_ERRORS as exc:
        raise _unreachable(cluster, exc) from None
    if not 200 <= resp.status <= 299:
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = {}
        raise KubeError(cluster.name, resp.status, decoded.get("reason", resp.reason or ""),
                        decoded.get("message", data.decode(errors="replace")[:500]))
    return data


async def request(
    cluster: Cluster,
    method: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    timeout: float | None = 10.0,
    content_type: str = "application/json",
) -> Any:
    """One API call; returns the decoded JSON body or raises KubeError."""
    data = await _call(cluster, method, path, list((query or {}).items()), body, timeout,
                       {"Accept": "application/json", "Content-Type": content_type})
    try:
        return json.loads(data) if data else {}
    except ValueError:  # a proxy's page, not the API's answer
        raise KubeError(cluster.name, 0, "Unreachable",
                        f"not a JSON answer: {data[:80]!r}") from None


# An apiserver that has just started answers 403 until its RBAC cache has synced (the soak
# saw it 8-20 s after a restart): a 403 is asked again this long before it is believed.
FORBIDDEN_PATIENCE_SECONDS = 15.0


async def request_patient(cluster: Cluster, method: str, path: str, **kw: Any) -> Any:
    """``request``, asked again while the answer is 403 for FORBIDDEN_PATIENCE_SECONDS: for
    the calls whose 403 fails a task as a missing permission (claims, Events)."""
    loop, delay = asyncio.get_running_loop(), 0.5
    deadline = loop.time() + FORBIDDEN_PATIENCE_SECONDS
    while True:
        try:
            return await request(cluster, method, path, **kw)
        except KubeError as exc:
            if exc.status != 403 or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 4.0)


def pods_path(namespace: str | None, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    return f"{base}/{name}" if name else base


async def list_pods(cluster: Cluster, namespace: str | None, **query: Any) -> dict[str, Any]:
    return await request(cluster, "GET", pods_path(namespace), query=query)


async def get_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:  # patient: a 403 here fails the task (a follower's recheck, a read-back)
        return await request_patient(cluster, "GET", pods_path(namespace, name))
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


CREATE_SECONDS = 10.0
# The API server gives up on a create before we do, so that a create whose answer we never
# got is, by the time we read it back, not still in flight (webhooks, etcd) on the server.
CREATE_SERVER_SECONDS = 8


async def create_pod(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Any]:
    ns = pod["metadata"]["namespace"]
    return await request(cluster, "POST", pods_path(ns), body=pod,
                         query={"timeout": f"{CREATE_SERVER_SECONDS}s"},
                         timeout=CREATE_SECONDS)


async def delete_pod(cluster: Cluster, namespace: str, name: str, grace: int | None = None,
                     *, uid: str | None = None) -> bool:
    """Delete; False when it was already gone. With ``uid``, only that object (HTTP 409 if
    the name now belongs to another)."""
    query = {} if grace is None else {"gracePeriodSeconds": grace}
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}} if uid \
        else None
    try:
        await request_patient(cluster, "DELETE", pods_path(namespace, name), query=query,
                              body=body)
        return True
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise


def _log_query(container: str, timestamps: bool, since_time: str | None,
               follow: bool = False) -> list[tuple[str, str]]:
    query = [("container", container)]
    if timestamps:
        query.append(("timestamps", "true"))
    if since_time:
        query.append(("sinceTime", since_time))
    if follow:
        query.append(("follow", "true"))
    return query


async def read_log(cluster: Cluster, namespace: str, name: str, container: str,
                   timeout: float = 30.0, *, timestamps: bool = False,
                   since_time: str | None = None) -> str:
    """A container's log as text (not JSON, unlike every other call here)."""
    data = await _call(cluster, "GET", pods_path(namespace, name) + "/log",
                       _log_query(container, timestamps, since_time), None, timeout,
                       {"Accept": "*/*"})
    return data.decode(errors="replace")


MAX_LOG_LINE = 1 << 20  # a longer line is given in pieces of this size (LogLines)


async def stream_log(cluster: Cluster, namespace: str, name: str, container: str, *,
                     since_time: str | None = None, timeout: float = 300.0,
                     ) -> AsyncIterator[str]:
    """Follow a container's log (with timestamps), line by line, until the server ends it
    (the container stopped) or nothing came for ``timeout`` seconds (an idle timeout: a busy
    stream is never cut)."""
    api = await clients.async_api(cluster)
    _count(cluster.name, "STREAM", pods_path(namespace, name) + "/log")
    try:
        resp = await api.rest_client.request(
            "GET", api.configuration.host + pods_path(namespace, name) + "/log",
            query_params=_log_query(container, True, since_time, follow=True),
            headers=await _authorized(api, {"Accept": "*/*"}), _preload_content=False,
            _request_timeout=stream_timeout(timeout))
    except TRANSPORT_ERRORS as exc:
        raise _unreachable(cluster, exc) from None
    try:
        if resp.status != 200:
            raise await _stream_refused(cluster, resp)
        async for line in log_lines(lambda: _log_chunk(cluster, resp)):
            yield line
    finally:
        resp.release()


async def log_lines(next_chunk: Callable[[], Awaitable[bytes | None]],
                    max_line: int = MAX_LOG_LINE) -> AsyncIterator[str]:
    """The lines of a followed log's chunks (b"": the server ended it; None: it was idle too
    long, so the unfinished last line is dropped: the reconnect sends it whole)."""
    lines = LogLines(max_line)
    while chunk := await next_chunk():
        for line in lines.feed(chunk):
            yield line.decode(errors="replace")
    if chunk is not None:  # the server ended it: a last line without end is whole
        for line in lines.end():
            yield line.decode(errors="replace")


def stream_timeout(idle: float) -> aiohttp.ClientTimeout:
    """No total limit (kubernetes_asyncio passes a ClientTimeout through as it is): only a
    read that waits ``idle`` seconds for a byte ends the stream."""
    return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle)


_LOG_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\S+ ")  # timestamps=true: RFC 3339 and a space


class LogLines:
    """A log stream's bytes as lines. A line longer than ``MAX_LOG_LINE`` is given in pieces
    of that size, each after the first with the first's timestamp: shown like any line, and
    the resume point counts them, so a reconnect (which sends the whole line again, cut at the
    same places) skips exactly the pieces shown. The unfinished last line is kept back."""

    def __init__(self, max_line: int = MAX_LOG_LINE) -> None:
        self.max_line, self.rest = max_line, b""
        self.stamp: bytes | None = None  # a line given in pieces: its timestamp (b"": none)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines (and pieces) ``chunk`` completes."""
        *ends, rest = (self.rest + chunk).split(b"\n")
        out = []
        for line in ends:
            out += self._cut(line, whole=True)
        out += self._cut(rest, whole=False)
        return out

    def _cut(self, line: bytes, *, whole: bool) -> list[bytes]:
        """A line's full pieces (and its last one if ``whole``); what is left waits."""
        out = []
        while len(line) > self.max_line:
            piece, line = line[:self.max_line], line[self.max_line:]
            out.append((self.stamp or b"") + piece)
            if self.stamp is None:
                stamp = _LOG_STAMP.match(piece)
                self.stamp = stamp[0] if stamp else b""
        if whole:
            out.append((self.stamp or b"") + line)
            self.stamp, line = None, b""
        self.rest = line
        return out

    def end(self) -> list[bytes]:
        """At the stream's end (the server's, not a timeout: then the unfinished line is
        dropped, as the reconnect sends it again): the last line, though it has no end."""
        return self.feed(b"\n") if self.rest else []


async def _log_chunk(cluster: Cluster, resp: Any) -> bytes | None:
    """The stream's next bytes; b"" at its end, None once it was idle too long (opened
    again)."""
    try:
        return await resp.content.readany()
    except asyncio.TimeoutError:
        return None
    except TRANSPORT_ERRORS as exc:
        raise _unreachable(cluster, exc) from None


async def list_nodes(cluster: Cluster, timeout: float) -> dict[str, Any]:
    return await request(cluster, "GET", "/api/v1/nodes", timeout=timeout)


def watch_pods(
    cluster: Cluster, namespace: str, label_selector: str, resource_version: str,
    timeout_seconds: int = 300,
) -> AsyncIterator[dict[str, Any]]:
    """Raw watch events ({type, object}) until the server closes the stream."""
    return watch_path(cluster, pods_path(namespace), {"labelSelector": label_selector},
                      resource_version, timeout_seconds)


async def watch_path(
    cluster: Cluster, path: str, query: dict[str, str], resource_version: str,
    timeout_seconds: int = 300, *, idle: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Watch any collection (with bookmarks) from `resource_version`: raw events until the
    server closes the stream. `idle`: a stream silent this long is broken (unreachable),
    as a partitioned apiserver's is, which never closes it."""
    api = await clients.async_api(cluster)
    params = [
        ("watch", "true"), *query.items(),
        ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(timeout_seconds)),
    ]
    _count(cluster.name, "WATCH", path)
    try:
        resp = await api.rest_client.request(
            "GET", api.configuration.host + path, query_params=params,
            headers=await _authorized(api, {"Accept": "application/json"}),
            _preload_content=False,
            _request_timeout=stream_timeout(idle) if idle else timeout_seconds + 30,
        )
    except TRANSPORT_ERRORS as exc:
        raise _unreachable(cluster, exc) from None
    try:
        if resp.status != 200:
            raise await _stream_refused(cluster, resp)
        while (line := await _next_line(cluster, resp)) is not None:
            if line.strip():
                yield json.loads(line)
    finally:
        resp.release()


async def _stream_refused(cluster: Cluster, resp: Any) -> KubeError:
    """The error of a stream the server did not open, with its own message."""
    body = await resp.read()
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = {}
    return KubeError(cluster.name, resp.status, decoded.get("reason", ""),
                     decoded.get("message", body.decode(errors="replace")[:300]))


async def _next_line(cluster: Cluster, resp: Any) -> bytes | None:
    """One event's line of a watch stream; None at its end. A line cut mid-event is the
    connection's fault (unreachable), not a bug."""
    try:
        line = await resp.content.readline()
    except TRANSPORT_ERRORS as exc:
        raise _unreachable(cluster, exc) from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _unreachable(cluster, ConnectionError("watch stream cut mid-event"))
    return line
