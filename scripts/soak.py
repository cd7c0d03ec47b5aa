"""`./dev soak`: many tasks under random faults, then count what must be zero (issue 14).

Bounded in time and count, loopback only, and on a sandbox of its own (its own state
directory and ports), so it never disturbs the test sandbox. For ``--minutes`` it keeps up
to ``--concurrency`` tasks running on three clusters (rise, bair, lab: three orgs, two
2-GPU nodes each) and injects, at random:

- **Kueue preemptions**: an owner's 2-GPU pod on a random cluster (borrowed work there is
  reclaimed), besides the reclaims the tasks cause among themselves;
- **apiserver restarts**: a cluster's kube-apiserver stopped for 5-15 s, then started;
- **triggerer kills**: a task's follower is cancelled mid-flight, as a killed triggerer's
  trigger is, and a new one starts from the state the task deferred with, after 0-10 s
  (what Airflow's next triggerer does). A third of them are frozen instead (a SIGSTOPped
  triggerer: every call it makes waits), thawed 2-15 s later, and cancelled 1-5 s after
  that (Airflow's cancel of the stale copy): two followers of one task, the claim decides.

Apiserver outages (at most 15 s) stay under the default ``unreachable_grace`` (30 s): a
cluster that is lost for longer moves its work while the old pod may still run there (the
documented exception, docs/design.md), which would count here as a duplicate.

Each task is what the operator runs: ``Supervisor.place`` (the worker), then
``Supervisor.follow`` (the trigger), then ``finish.finish``. Every pod event of the three
apiservers is recorded (tests/helpers/podwatch.py). The report (JSON and markdown, in
benchmarks/results/) counts tasks finished, and what must be 0: duplicates (two live pods of
one task at one moment, from watch events), leaked pods and claim Leases, lost timelines
(no verdict, attempt numbers not 1..n, or a pod of the task that its timeline does not
name).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / \
    "skyshare-soak"
CLUSTERS = ("rise", "bair", "lab")
RESULTS = ROOT / "benchmarks" / "results"
FLEET = {
    "version": 1,
    "defaults": {"namespace": "skyshare-{org}", "access": {"context": "{org}@{cluster}"},
                 "gpu_products": {"T4": "Tesla-T4"}},
    "policy": {"probe_timeout_seconds": 3, "borrow_cooldown_seconds": 60},
    "orgs": [{"name": c, "members": ["soak"]} for c in CLUSTERS],
    "clusters": [{"name": c, "owner": c, "context": f"{c}-operator"} for c in CLUSTERS],
}
log = logging.getLogger("soak")


@dataclass
class Outcome:
    task: str
    org: str
    gpus: int
    status: str = ""
    message: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    follower_kills: int = 0
    overlapped: int = 0  # kills where the old follower ran on beside the new one


@dataclass
class Tally:
    apiserver_restarts: int = 0
    injected_preemptions: int = 0
    tombstones: int = 0  # claim Leases marked with the task's verdict, left at the end
    triggerer_kills: int = 0  # --airflow: kill -9 of a real triggerer
    triggerer_freezes: int = 0  # --airflow: SIGSTOP of a real triggerer, SIGCONT later
    down_at_drain: list[str] = field(default_factory=list)  # apiservers restore could not start


def sandbox_up() -> str:
    """The soak's own sandbox (set here, not on import: a test that imports this module
    once moved the whole suite's sandbox onto the soak's state and ports)."""
    from airflow_provider_skyshare.sandbox import cluster
    from airflow_provider_skyshare.sandbox.api import Sandbox

    os.environ.setdefault("SKYSHARE_SANDBOX_HOME", str(STATE / "sandbox"))
    os.environ.setdefault("SKYSHARE_SANDBOX_PORT_BASE", "21000")
    STATE.mkdir(parents=True, exist_ok=True)
    fleet = STATE / "fleet.yaml"
    fleet.write_text(json.dumps(FLEET, indent=2))  # YAML is a superset of JSON
    specs = [cluster.ClusterSpec(c, nodes=2, gpus=2) for c in CLUSTERS]
    box = Sandbox.ensure_up(specs, [str(fleet)])
    os.environ["KUBECONFIG"] = box.kubeconfig
    return str(fleet)


def job_for(fleet_file: str, n: int, org: str, gpus: int, seconds: int):
    from airflow_provider_skyshare.fleetfile import load
    from airflow_provider_skyshare.follow import Job, Settings
    from airflow_provider_skyshare.operators import MultiClusterGpuOperator
    from airflow_provider_skyshare.placement import Request
    from airflow_provider_skyshare.pods import TaskIdentity

    op = MultiClusterGpuOperator(task_id=f"soak{n}", image="busybox", gpus=f"T4:{gpus}",
                                 org=org, user="soak", fleet_file=fleet_file,
                                 annotations={"sandbox.skyshare.dev/duration": f"{seconds}s"})
    identity = TaskIdentity("soak", f"soak{n}", f"run-{uuid.uuid4().hex[:8]}")
    return Job(load(fleet_file), Request("T4", gpus, org, "soak"), op.build_template(),
               identity, Settings(max_preemptions=20))


class Frozen:
    """A follower whose process is stopped: its loop may still step on what it had read,
    but every call it makes to a cluster waits until it is thawed."""

    def __init__(self, api: Any, thawed: asyncio.Event) -> None:
        self.api, self.thawed = api, thawed

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.api, name)

        async def gated(*args: Any, **kwargs: Any) -> Any:
            await self.thawed.wait()
            return await call(*args, **kwargs)

        return gated


async def run_task(fleet_file: str, n: int, rng: random.Random, kill_rate: float) -> Outcome:
    from airflow_provider_skyshare import finish
    from airflow_provider_skyshare.follow import Follow
    from airflow_provider_skyshare.supervisor import Supervisor

    org, gpus, seconds = rng.choice(CLUSTERS), rng.choice((1, 2)), rng.randint(15, 60)
    out = Outcome(f"soak{n}", org, gpus)
    task_log = logging.getLogger(f"soak.task{n}")
    worker = Supervisor.for_job(job_for(fleet_file, n, org, gpus, seconds), log=task_log)
    deferred = (await worker.place()).to_dict()  # the trigger's kwargs
    leftovers: list[asyncio.Task[Any]] = []
    while True:
        sup = Supervisor(Follow.from_dict(deferred, worker.job.fleet), log=task_log)
        follower = asyncio.create_task(sup.follow())
        kill_after = rng.uniform(3, 45) if rng.random() < kill_rate else None
        done, _ = await asyncio.wait({follower}, timeout=kill_after)
        if follower in done:
            state = follower.result()
            break
        out.follower_kills += 1
        if rng.random() < 0.33:  # frozen, thawed later, then cancelled by "Airflow"
            out.overlapped += 1
            thawed = asyncio.Event()
            sup.api = Frozen(sup.api, thawed)
            leftovers.append(follower)
            loop, thaw_at = asyncio.get_running_loop(), rng.uniform(2, 15)
            loop.call_later(thaw_at, thawed.set)
            loop.call_later(thaw_at + rng.uniform(1, 5), follower.cancel)
        else:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await asyncio.sleep(rng.uniform(0, 10))  # until another triggerer takes it
    for old in leftovers:
        old.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    verdict = state.verdict
    assert verdict is not None
    await finish.finish(state, verdict, finish.FinishPolicy(finish.FinishAction.DELETE_POD,
                                                             False), task_log)
    out.status, out.message = verdict.status.value, verdict.message[:200]
    out.attempts = state.timeline.to_list()
    return out


async def inject(rng: random.Random, until: float, tally: Tally,
                 outages: set[asyncio.Future[None]]) -> None:
    """Random faults until ``until``: owner pods that reclaim, apiserver restarts.

    An outage runs whole in a thread (stop, wait, start) and is shielded: cancelling the
    faults at the end never leaves an apiserver down. ``restore`` awaits what is in
    ``outages`` before the drain (a stop cut by the cancel once left rise down through it).
    """
    from airflow_provider_skyshare.sandbox.api import Sandbox

    box = Sandbox(os.environ["KUBECONFIG"], list(CLUSTERS))
    while time.time() < until:
        await asyncio.sleep(rng.uniform(15, 45))
        cluster = rng.choice(CLUSTERS)
        if rng.random() < 0.6:
            await asyncio.to_thread(_owner_pod, box, cluster, f"soak-owner-{uuid.uuid4().hex[:6]}")
            tally.injected_preemptions += 1
        else:
            outage = asyncio.ensure_future(
                asyncio.to_thread(_outage, box, cluster, rng.uniform(5, 15)))
            outages.add(outage)
            await asyncio.shield(outage)
            outages.discard(outage)
            tally.apiserver_restarts += 1


def _outage(box, cluster: str, seconds: float) -> None:
    log.info("fault: %s apiserver down for %.0f s", cluster, seconds)
    box.stop_component(cluster, "apiserver")
    time.sleep(seconds)
    box.start_component(cluster, "apiserver")


def report_faults(results: list[Any]) -> None:
    """A fault injector that died of an error says so (gather would hide it)."""
    for result in results:
        if isinstance(result, Exception):
            log.error("fault injection failed", exc_info=result)


async def restore(outages: set[asyncio.Future[None]]) -> list[str]:
    """After the faults are cancelled: every apiserver answers again before the drain.

    Waits for the outages still under way, then starts any apiserver that is not healthy
    (a no-op for the healthy). Returns the clusters still down, each logged with its error.
    """
    from airflow_provider_skyshare.sandbox.api import Sandbox
    from airflow_provider_skyshare.sandbox.cluster import SandboxError

    for outage in list(outages):
        try:
            await outage
        except SandboxError as exc:
            log.error("fault: an apiserver restart failed: %s", exc)
    box, down = Sandbox(os.environ["KUBECONFIG"], list(CLUSTERS)), []
    for cluster in CLUSTERS:
        try:
            await asyncio.to_thread(box.start_component, cluster, "apiserver")
        except SandboxError as exc:
            log.error("fault: %s apiserver still down before the drain: %s", cluster, exc)
            down.append(cluster)
    log.info("faults over: apiservers down: %s", ", ".join(down) or "none")
    return down


def _owner_pod(box, cluster: str, name: str) -> None:
    """An owner's 2-GPU pod for 20 s (not the provider's: it reclaims, and goes)."""
    from kubernetes.client.exceptions import ApiException

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "labels": {"kueue.x-k8s.io/queue-name": "skyshare-owner",
                                 "kueue.x-k8s.io/priority-class": "high-priority"},
        "annotations": {"sandbox.skyshare.dev/duration": "20s"}},
        "spec": {"restartPolicy": "Never", "priorityClassName": "high-priority",
                 "nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"},
                 "containers": [{"name": "c", "image": "busybox", "resources": {
                     "limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}}]}}
    try:
        box.core_v1(cluster).create_namespaced_pod(f"skyshare-{cluster}", pod)
        log.info("fault: owner pod %s on %s", name, cluster)
    except ApiException as exc:  # its apiserver may be the one down right now
        log.warning("fault: owner pod on %s not created: %s", cluster, exc.reason)


async def drive(fleet_file: str, args: argparse.Namespace, tally: Tally) -> list[Outcome]:
    rng = random.Random(args.seed)
    until = time.time() + args.minutes * 60
    outages: set[asyncio.Future[None]] = set()
    faults = asyncio.create_task(inject(random.Random(args.seed + 1), until, tally, outages))
    running: set[asyncio.Task[Outcome]] = set()
    done: list[Outcome] = []
    n = 0
    while time.time() < until and n < args.tasks:
        while len(running) < args.concurrency and n < args.tasks:
            n += 1
            running.add(asyncio.create_task(run_task(fleet_file, n, rng, args.kill_rate),
                                            name=f"soak{n}"))
        finished, running = await asyncio.wait(running, timeout=5,
                                               return_when=asyncio.FIRST_COMPLETED)
        done += [_result(t) for t in finished]
    faults.cancel()
    report_faults(await asyncio.gather(faults, return_exceptions=True))
    tally.down_at_drain = await restore(outages)
    finished, pending = await asyncio.wait(running, timeout=600) if running else (set(), set())
    done += [_result(t) for t in finished]
    for t in pending:  # hung: reported as lost (no verdict), never dropped
        t.cancel()
        done.append(Outcome(t.get_name(), "", 0, message="no verdict 10 minutes after the end"))
    return done


def _result(task: asyncio.Task[Outcome]) -> Outcome:
    """A task's outcome; one that raised is reported (as lost), not a crash of the soak."""
    exc = task.exception()
    if exc is None:
        return task.result()
    return Outcome(task.get_name(), "", 0, message=f"{type(exc).__name__}: {exc}"[:300])


# -- what the apiservers saw, and the report ------------------------------------------------
def task_of(pod_name: str) -> str:
    """'soak12-1a2b3c4d-t1-a3' -> 'soak12-1a2b3c4d-t1': one task's try."""
    return pod_name.rsplit("-a", 1)[0]


def analyse(outcomes: list[Outcome], pods, leaked_pods: dict, leaked_leases: dict,
            tally: Tally, minutes: float, started: float, cleaned: int) -> dict[str, Any]:
    by_task = pods.most_live_by(lambda name: task_of(name.split("/", 1)[1]))
    duplicates = {t: names for t, (most, names) in by_task.items() if most > 1}
    seen_pods: dict[str, set[str]] = {}
    for name in pods.created():
        pod = name.split("/", 1)[1]
        seen_pods.setdefault(task_of(pod), set()).add(pod)
    lost = [o.task for o in outcomes if _lost(o, seen_pods)]
    uids: dict[str, set[str]] = {}
    for uid, (name, _, _) in pods.intervals().items():
        uids.setdefault(name.split("/", 1)[1], set()).add(uid)
    recreated = sorted(name for name, found in uids.items() if len(found) > 1)
    present = pods.most_live_by(lambda name: task_of(name.split("/", 1)[1]), present=True)
    moves = [a for o in outcomes for a in o.attempts if a["outcome"] in ("Preempted", "Lost")]
    return {
        "started": started, "minutes": round(minutes, 1),
        "tasks_started": len(outcomes), "tasks_finished": sum(o.status == "success"
                                                               for o in outcomes),
        "verdicts": _count(o.status for o in outcomes),
        "duplicates": len(duplicates), "duplicate_pods": duplicates,
        "attempts_created_twice": len(recreated), "attempts_created_twice_names": recreated,
        "tasks_with_two_pod_objects_at_once": sum(most > 1 for most, _ in present.values()),
        "two_pod_objects_at_once": {t: names for t, (most, names) in present.items()
                                    if most > 1},
        "leaked_pods": sum(len(v) for v in leaked_pods.values()), "leaked_pod_names": leaked_pods,
        "leaked_leases": sum(len(v) for v in leaked_leases.values()),
        "lost_timelines": len(lost), "lost_tasks": lost,
        "moves": len(moves), "preempted": sum(a["outcome"] == "Preempted" for a in moves),
        "follower_kills": sum(o.follower_kills for o in outcomes),
        "followers_overlapping": sum(o.overlapped for o in outcomes),
        "apiserver_restarts": tally.apiserver_restarts,
        "injected_preemptions": tally.injected_preemptions, "tombstones": tally.tombstones,
        "triggerer_kills": tally.triggerer_kills, "triggerer_freezes": tally.triggerer_freezes,
        "apiservers_down_at_drain": len(tally.down_at_drain),
        "pods_created": len(pods.created()), "watch_reconnects": pods.reconnects,
        "watch_gap_seconds": round(pods.gap_seconds, 1), "cleaned_before": cleaned,
        "outcomes": [asdict(o) for o in outcomes],
    }


def _lost(o: Outcome, seen_pods: dict[str, set[str]]) -> bool:
    """No verdict; numbers not 1..n; or a pod of the task its timeline does not name."""
    if not o.status or not o.attempts:
        return True
    if [a["number"] for a in o.attempts] != list(range(1, len(o.attempts) + 1)):
        return True
    named = {a["pod"] for a in o.attempts}
    prefix = task_of(o.attempts[0]["pod"])
    return not seen_pods.get(prefix, set()) <= named


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def markdown(r: dict[str, Any]) -> str:
    zero = ("duplicates", "attempts_created_twice", "leaked_pods", "leaked_leases",
            "lost_timelines", "apiservers_down_at_drain")
    extra = [k for k in ("handed_over", "stepped_down", "read_tombstone") if k in r]
    rows = [f"| {k.replace('_', ' ')} | {r[k]} | {'0' if k in zero else '-'} |" for k in (
        "tasks_started", "tasks_finished", *zero, "moves", "preempted", "follower_kills",
        "followers_overlapping", "triggerer_kills", "triggerer_freezes",
        "tasks_with_two_pod_objects_at_once", "apiserver_restarts",
        "injected_preemptions", "tombstones", "pods_created", "watch_reconnects", "watch_gap_seconds",
        "cleaned_before", *extra)]
    verdicts = ", ".join(f"{k}: {v}" for k, v in sorted(r["verdicts"].items()))
    through = " through a production-shaped Airflow" if r.get("mode") == "airflow" else ""
    return "\n".join([
        f"# Soak{through}: {r['minutes']} minutes, {r['tasks_started']} tasks on {len(CLUSTERS)} clusters",
        "", "| count | value | must be |", "|---|---|---|", *rows, "",
        f"Verdicts: {verdicts}.", "",
        "Duplicates are two live pods of one task at one moment, from the apiservers' watch "
        "events; a lost timeline is a task without a verdict, with attempt numbers other than "
        "1..n, or with a pod its timeline does not name. Two pod objects at once counts a "
        "terminating pod too (wait_for_termination; KWOK deletes pods at once). During a "
        "watch gap (an apiserver restart) a pod counts as live from the gap's start until "
        "the relist shows it gone.", ""])


def main() -> int:
    p = argparse.ArgumentParser(prog="./dev soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--tasks", type=int, default=400, help="at most this many tasks")
    p.add_argument("--concurrency", type=int, default=12)
    p.add_argument("--kill-rate", type=float, default=0.2,
                   help="share of followers killed mid-flight")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--airflow", action="store_true",
                   help="through a real production-shaped Airflow, killing and freezing its "
                        "triggerers (scripts/soak_airflow.py)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    sys.path.insert(0, str(ROOT))
    if args.airflow:
        from scripts import soak_airflow

        return soak_airflow.main(args)
    from tests.helpers.fixtures import AdminClients, provider_leases, provider_pods
    from tests.helpers.podwatch import PodRecorder

    fleet_file = sandbox_up()
    admin = AdminClients(os.environ["KUBECONFIG"])
    cleaned = _clean(admin, provider_pods, provider_leases)
    started, tally = time.time(), Tally()
    with PodRecorder(admin, CLUSTERS, "app.kubernetes.io/managed-by=airflow-provider-skyshare",
                     resilient=True) as pods:
        outcomes = asyncio.run(_run(fleet_file, args, tally))
        leaked = _settled(admin, provider_pods)
    leases = provider_leases(admin)  # live claims; tombstones are kept on purpose
    tally.tombstones = sum(map(len, provider_leases(admin, tombstones=True).values())) - sum(
        map(len, leases.values()))
    report = analyse(outcomes, pods, leaked, leases, tally, (time.time() - started) / 60,
                     started, cleaned)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "soak.md").write_text(markdown(report))
    print(markdown(report))
    bad = [k for k in ("duplicates", "attempts_created_twice", "leaked_pods", "leaked_leases",
                       "lost_timelines", "apiservers_down_at_drain") if report[k]]
    return 1 if bad or not report["tasks_finished"] else 0


async def _run(fleet_file: str, args: argparse.Namespace, tally: Tally) -> list[Outcome]:
    from airflow_provider_skyshare import clients, watch

    try:
        return await drive(fleet_file, args, tally)
    finally:
        await watch.close_hubs()
        await clients.close_async_clients()


def _clean(admin, provider_pods, provider_leases) -> int:
    """What an interrupted earlier soak left: removed, counted, so leaks are this run's."""
    from kubernetes import client

    pods, leases = provider_pods(admin), provider_leases(admin, tombstones=True)
    for cluster, names in pods.items():
        for item in names:
            ns, name = item.split("/")
            admin[cluster].delete_namespaced_pod(name, ns, grace_period_seconds=0)
    for cluster, names in leases.items():
        for item in names:
            ns, name = item.split("/")
            client.CoordinationV1Api(admin[cluster].api_client).delete_namespaced_lease(name, ns)
    if _settled(admin, provider_pods):
        raise SystemExit("pods of an earlier soak do not go away: skyshare-sandbox down "
                         f"(SKYSHARE_SANDBOX_HOME={os.environ['SKYSHARE_SANDBOX_HOME']})")
    return sum(map(len, pods.values())) + sum(map(len, leases.values()))


def _settled(admin, provider_pods) -> dict[str, list[str]]:
    """Provider pods left once deletions have had a minute to finish (Kueue's finalizer).
    An apiserver the last fault restarted may still be coming up: asked again meanwhile
    (a soak once ended in a traceback here, its report lost)."""
    import urllib3

    deadline = time.time() + 90
    while True:
        try:
            left = provider_pods(admin)
        except urllib3.exceptions.HTTPError:
            if time.time() > deadline:
                raise
            left = {"?": ["an apiserver does not answer yet"]}
        if not left or time.time() > deadline:
            return left
        time.sleep(1)


if __name__ == "__main__":
    raise SystemExit(main())
