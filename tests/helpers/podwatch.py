"""The apiservers' own account of a task's pods: a watch per cluster, recorded as it happens.

"At most one live pod" is a claim about every moment, so it is checked from watch events
(each pod's creation and the moment it was marked for deletion or finished), not from
sampling a list now and then. A pod is live from its ADDED event until the first event that
shows it terminating (deletionTimestamp), finished (Succeeded/Failed) or gone (DELETED): a pod
in its termination grace period no longer counts, unless asked for (``present``: until the
object is gone, what ``wait_for_termination`` waits for).
Times are when this process received each event, one clock for all clusters (the API's own
timestamps have one-second resolution).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from kubernetes import watch

TERMINAL = {"Succeeded", "Failed"}


@dataclass(frozen=True)
class Seen:
    at: float  # when this process received the event (all clusters share one clock)
    cluster: str
    kind: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    phase: str
    terminating: bool
    gated: bool = False  # scheduling gates (Kueue's: not admitted yet)
    node: str = ""  # bound to it by the scheduler


@dataclass
class PodRecorder:
    """Watch every namespace of each cluster for pods matching ``selector`` from now on."""

    admin: object  # tests.helpers.fixtures.AdminClients
    clusters: tuple[str, ...]
    selector: str
    events: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _failed: list[BaseException] = field(default_factory=list)
    # A soak restarts apiservers: reconnect instead of failing. Pods missing from the relist
    # after a gap count as deleted at its end (live through the gap: never a missed overlap).
    resilient: bool = False
    reconnects: int = 0
    gap_seconds: float = 0.0  # time without a watch on some cluster (resilient only)

    def __enter__(self) -> PodRecorder:
        ready = []
        for cluster in self.clusters:
            api = self.admin[cluster]
            listing = api.list_pod_for_all_namespaces(label_selector=self.selector)
            for pod in listing.items:  # what already exists counts from now
                self._record(cluster, "ADDED", pod)
            started = threading.Event()
            thread = threading.Thread(target=self._watch, daemon=True, name=f"watch-{cluster}",
                                      args=(cluster, listing.metadata.resource_version, started))
            thread.start()
            self._threads.append(thread)
            ready.append(started)
        for started in ready:
            started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self._check()

    def _check(self) -> None:
        """A recorder that stopped recording cannot vouch for anything: fail, never pass."""
        if self._failed:
            raise AssertionError(f"the pod watch failed: {self._failed[0]!r}") from self._failed[0]

    def _watch(self, cluster: str, resource_version: str, started: threading.Event) -> None:
        while True:
            try:
                self._follow(cluster, resource_version, started)
                return
            except BaseException as exc:  # noqa: BLE001 - kept and raised in the test's thread
                if not self.resilient or self._stop.is_set():
                    self._failed.append(exc)
                    started.set()
                    return
            resource_version = self._relist(cluster, time.time())

    def _relist(self, cluster: str, lost_at: float) -> str:
        """After a failed watch: what exists now (a pod new to the recorder counts from the
        moment the watch was lost: an overlap inside the gap is never missed), and an end
        for what vanished meanwhile (at the relist: live through the gap)."""
        self.reconnects += 1
        while not self._stop.is_set():
            try:
                listing = self.admin[cluster].list_pod_for_all_namespaces(
                    label_selector=self.selector, _request_timeout=(5, 30))
                break
            except Exception:  # noqa: BLE001 - the apiserver is still down: ask again
                self._stop.wait(1)
        else:
            return ""
        now_there = {p.metadata.uid for p in listing.items}
        known = self.intervals()
        for uid, (name, _, end) in known.items():
            if end is None and name.startswith(f"{cluster}/") and uid not in now_there:
                self.events.append(Seen(time.time(), cluster, "DELETED", name.split("/", 1)[1],
                                        uid, "", True))
        for pod in listing.items:
            if pod.metadata.uid not in known:
                self.events.append(Seen(lost_at, cluster, "ADDED", pod.metadata.name,
                                        pod.metadata.uid, "", False))
            self._record(cluster, "MODIFIED", pod)
        self.gap_seconds += time.time() - lost_at
        return listing.metadata.resource_version

    def _follow(self, cluster: str, resource_version: str, started: threading.Event) -> None:
        api = self.admin[cluster]
        while not self._stop.is_set():
            w = watch.Watch()
            started.set()
            for event in w.stream(api.list_pod_for_all_namespaces, label_selector=self.selector,
                                  resource_version=resource_version, timeout_seconds=5,
                                  allow_watch_bookmarks=True, _request_timeout=(5, 30)):
                kind, pod = event["type"], event["object"]
                if kind == "ERROR":  # e.g. 410 Gone: events were missed
                    raise RuntimeError(f"watch of {cluster} ended: {event.get('raw_object')}")
                if kind == "BOOKMARK":  # delivered as a plain dict
                    raw = event.get("raw_object") or {}
                    resource_version = raw.get("metadata", {}).get("resourceVersion",
                                                                    resource_version)
                else:
                    resource_version = pod.metadata.resource_version
                    self._record(cluster, kind, pod)
                if self._stop.is_set():
                    w.stop()

    def _record(self, cluster: str, kind: str, pod) -> None:
        self.events.append(Seen(time.time(), cluster, kind, pod.metadata.name, pod.metadata.uid,
                                pod.status.phase or "", pod.metadata.deletion_timestamp is not None,
                                bool(pod.spec.scheduling_gates), pod.spec.node_name or ""))

    # -- what the events say ------------------------------------------------------------------
    def intervals(self, *, present: bool = False) -> dict[str, tuple[str, float, float | None]]:
        """uid -> (cluster/name, live from, live until or None while still live). With
        ``present``, until the pod object is gone (DELETED): a terminating pod's containers
        may still run (a checkpoint being written)."""
        self._check()
        out: dict[str, tuple[str, float, float | None]] = {}
        for e in sorted(self.events, key=lambda e: e.at):
            if e.uid not in out:
                out[e.uid] = (f"{e.cluster}/{e.name}", e.at, None)
            name, start, end = out[e.uid]
            ended = e.kind == "DELETED" if present else (
                e.kind == "DELETED" or e.terminating or e.phase in TERMINAL)
            if end is None and ended:
                out[e.uid] = (name, start, e.at)
        return out

    def most_live_at_once(self, *, present: bool = False) -> tuple[int, list[str]]:
        """The largest number of pods live (or ``present``) at one moment, and which."""
        return _most_at_once(self.intervals(present=present))

    def most_live_by(self, key, *, present: bool = False) -> dict[str, tuple[int, list[str]]]:
        """most_live_at_once per group of pods (``key(cluster/name)``: e.g. one task)."""
        groups: dict[str, dict[str, tuple[str, float, float | None]]] = {}
        for uid, span in self.intervals(present=present).items():
            groups.setdefault(key(span[0]), {})[uid] = span
        return {k: _most_at_once(spans) for k, spans in groups.items()}

    def admitted(self) -> dict[str, float]:
        """cluster/name -> when the pod was first seen without scheduling gates (Kueue
        admitted it) or bound to a node, whichever came first."""
        self._check()
        out: dict[str, float] = {}
        for e in sorted(self.events, key=lambda e: e.at):
            if (not e.gated or e.node) and e.kind != "DELETED":
                out.setdefault(f"{e.cluster}/{e.name}", e.at)
        return out

    def created(self) -> list[str]:
        return [name for name, _, _ in self.intervals().values()]


def _most_at_once(spans: dict[str, tuple[str, float, float | None]]) -> tuple[int, list[str]]:
    marks = []
    for uid, (name, start, end) in spans.items():
        if end == start:  # first seen already terminating or finished: never live
            continue
        marks.append((start, 1, uid, name))
        marks.append((end if end is not None else float("inf"), -1, uid, name))
    live: dict[str, str] = {}
    best: tuple[int, list[str]] = (0, [])
    for _, delta, uid, name in sorted(marks, key=lambda m: (m[0], m[1])):  # ends first
        if delta > 0:
            live[uid] = name
            if len(live) > best[0]:
                best = (len(live), sorted(live.values()))
        else:
            live.pop(uid, None)
    return best
