"""Record real pods and their watch events from the sandbox as unit-test fixtures.

tests/fixtures/pods/<case>.json = {"description", "pod": last raw pod JSON, "events": [...]}.
Re-run after changing the sandbox's Kueue/KWOK versions:  python scripts/record_fixtures.py
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pods"
NS = "skyshare"


def pod(name, queue=None, priority="low-priority", gpus=2, duration=None, exit_code=None):
    labels = {"skyshare-fixture": "yes"}
    if queue:
        labels.update({"kueue.x-k8s.io/queue-name": queue,
                       "kueue.x-k8s.io/priority-class": priority})
    ann = {}
    if duration:
        ann["sandbox.skyshare.dev/duration"] = duration
    if exit_code is not None:
        ann["sandbox.skyshare.dev/exit-code"] = str(exit_code)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": ann},
            "spec": {"restartPolicy": "Never", "priorityClassName": priority,
                     "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
                     "containers": [{"name": "base", "image": "busybox", "resources": {
                         "limits": {"nvidia.com/gpu": str(gpus)},
                         "requests": {"nvidia.com/gpu": str(gpus)}}}]}}


class Recorder(threading.Thread):
    """Raw watch events of one pod name."""

    def __init__(self, api, name):
        super().__init__(daemon=True)
        self.api, self.name, self.events = api, name, []
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            resp = self.api.list_namespaced_pod(
                NS, field_selector=f"metadata.name={self.name}", watch=True, timeout_seconds=2,
                _preload_content=False)
            for line in resp:
                if line.strip():
                    ev = json.loads(line)
                    self.events.append({"type": ev["type"], "object": ev["object"]})

    def until(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in list(self.events):
                if predicate(ev):
                    return ev
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: condition not seen; events: {len(self.events)}")


def cond(ev, kind, reason=None):
    for c in (ev["object"].get("status") or {}).get("conditions") or []:
        if c["type"] == kind and c["status"] == "True" and (reason is None or c["reason"] == reason):
            return True
    return False


def phase(ev, value):
    return (ev["object"].get("status") or {}).get("phase") == value


def save(case, description, rec, last_pred):
    rec.stop.set()
    rec.join(5)
    last = [e for e in rec.events if last_pred(e)][-1]["object"]
    (OUT / f"{case}.json").write_text(json.dumps(
        {"description": description, "pod": last, "events": rec.events}, indent=1))
    print(f"recorded {case}: {len(rec.events)} events")


def main() -> int:
    from airflow_provider_skyshare.sandbox.api import Sandbox

    sb = Sandbox.ensure_up()
    api = sb.core_v1("bair")
    OUT.mkdir(parents=True, exist_ok=True)
    api.delete_collection_namespaced_pod(NS, label_selector="skyshare-fixture=yes",
                                         grace_period_seconds=0)
    time.sleep(1)

    # succeeded and failed
    for case, code in (("succeeded", None), ("failed", 3)):
        rec = Recorder(api, case)
        api.create_namespaced_pod(NS, pod(case, "skyshare-owner", gpus=1, duration="1s",
                                          exit_code=code))
        want = "Succeeded" if code is None else "Failed"
        rec.until(lambda e, w=want: phase(e, w))
        save(case, f"a 1-GPU pod that ended {want} (KWOK, exit code {code or 0})", rec,
             lambda e, w=want: phase(e, w))
        api.delete_namespaced_pod(case, NS, grace_period_seconds=0)

    # running, then pending_gated behind it, then kueue preemption of the borrower
    rec_low = Recorder(api, "borrowed")
    api.create_namespaced_pod(NS, pod("borrowed", "skyshare-borrower", "low-priority"))
    rec_low.until(lambda e: phase(e, "Running"))
    running = [e for e in rec_low.events if phase(e, "Running")][-1]["object"]
    (OUT / "running.json").write_text(json.dumps(
        {"description": "a borrower-tier 2-GPU pod admitted by Kueue and Running",
         "pod": running, "events": list(rec_low.events)}, indent=1))
    rec_gated = Recorder(api, "queued")
    api.create_namespaced_pod(NS, pod("queued", "skyshare-borrower", "low-priority"))
    rec_gated.until(lambda e: e["type"] in ("ADDED", "MODIFIED"))
    time.sleep(1)  # give Kueue its chance to (not) admit it: the point is that it stays gated
    save("pending_gated", "a second borrower pod queued (gated) while the GPUs are taken",
         rec_gated, lambda e: True)
    api.delete_namespaced_pod("queued", NS, grace_period_seconds=0)
    rec_high = Recorder(api, "owner")
    api.create_namespaced_pod(NS, pod("owner", "skyshare-owner", "high-priority", duration="2s"))
    rec_low.until(lambda e: e["type"] == "DELETED", 60)
    save("kueue_preempted", "a borrower pod preempted by Kueue when the owner reclaimed the GPUs",
         rec_low, lambda e: cond(e, "TerminationTarget"))
    rec_high.until(lambda e: phase(e, "Succeeded"))
    rec_high.stop.set()
    api.delete_namespaced_pod("owner", NS, grace_period_seconds=0)

    # kube-scheduler preemption: no Kueue labels, PriorityClasses only
    rec_s = Recorder(api, "plain-low")
    api.create_namespaced_pod(NS, pod("plain-low", None, "low-priority"))
    rec_s.until(lambda e: phase(e, "Running"))
    api.create_namespaced_pod(NS, pod("plain-high", None, "high-priority", duration="2s"))
    rec_s.until(lambda e: cond(e, "DisruptionTarget", "PreemptionByScheduler"), 60)
    rec_s.until(lambda e: e["type"] == "DELETED", 60)
    save("scheduler_preempted", "a plain low-priority pod preempted by kube-scheduler",
         rec_s, lambda e: cond(e, "DisruptionTarget"))
    api.delete_collection_namespaced_pod(NS, label_selector="skyshare-fixture=yes",
                                         grace_period_seconds=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
