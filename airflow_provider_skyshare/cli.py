"""`skyshare`: the fleet as its users see it.

  skyshare fleet                         who uses which GPUs, who lends to whom, what queues
  skyshare explain --gpus T4:2 --org X   where a request would go now, and what it would preempt
  skyshare timeline DAG RUN TASK         every attempt of a task, across clusters
  skyshare orphans [--delete]            pods whose task no longer follows them (Airflow DB)
  skyshare manifests --cluster NAME      what the fleet implies on a cluster: each org's
                                         namespace, credential, queue and the tier policy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from airflow_provider_skyshare import (
    capacity,
    clients,
    kube,
    metadb,
    orphans,
    taskpods,
    tenancy,
    views,
    watch,
)
from airflow_provider_skyshare.fleet import Cluster, Fleet, FleetError
from airflow_provider_skyshare.fleetfile import configured, load
from airflow_provider_skyshare.names import A_TASK
from airflow_provider_skyshare.placement import PlacementError, Request, choose, parse_gpus
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.timeline import Timeline, format_table


def _fleet(path: str | None) -> Fleet:
    import os

    path = path or os.environ.get("AIRFLOW__SKYSHARE__FLEET_FILE") or os.environ.get(
        "SKYSHARE_FLEET_FILE")
    if not path:
        try:
            from airflow.sdk import conf

            path = conf.get("skyshare", "fleet_file", fallback=None)
        except Exception:  # noqa: BLE001 - Airflow not configured: ask for --fleet
            path = None
    if not path:
        raise FleetError("(no fleet file)", "--fleet", "no fleet file given",
                         "pass --fleet FILE or set AIRFLOW__SKYSHARE__FLEET_FILE")
    paths = [path] if os.path.exists(path) else configured(path)  # a list: the first
    if not paths:
        raise FleetError(path, "--fleet", "names no fleet file", "pass --fleet FILE")
    return load(paths[0])


async def _run(coro: Any) -> Any:
    try:
        return await coro
    finally:
        await watch.close_hubs()
        await clients.close_async_clients()


def cmd_fleet(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    snapshot = asyncio.run(_run(capacity.probe(fleet)))
    if args.json:
        print(json.dumps({"clusters": views.fleet_rows(fleet, snapshot),
                          "tiers": views.tier_rows(fleet, snapshot=snapshot)}, indent=2))
    else:
        print(views.fleet_table(fleet, snapshot))
        print()
        print(views.tier_table(fleet, snapshot=snapshot))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    product, count = parse_gpus(args.gpus)
    request = Request(product, count, args.org, args.user)
    snapshot = asyncio.run(_run(capacity.probe(fleet)))
    decision = choose(request, fleet, snapshot, now=time.time())
    if args.json:
        print(json.dumps({
            "summary": decision.summary(),
            "tiers": views.tier_rows(fleet, only=args.org, snapshot=snapshot),
            "rows": [asdict(r) for r in decision.rows],
            "preempts": [asdict(h) for h in views.victims(decision, snapshot)],
        }, indent=2))
    else:
        print(views.explain_text(decision, snapshot))
        print()
        print(views.tier_table(fleet, only=args.org, snapshot=snapshot))
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    """What the fleet implies on one cluster, as YAML for `kubectl apply --server-side -f -`."""
    fleet = _fleet(args.fleet)
    if args.cluster not in fleet.clusters:
        raise FleetError(fleet.source, "clusters", f"unknown cluster {args.cluster!r}",
                         f"use one of: {', '.join(fleet.clusters)}")
    import yaml

    objects = tenancy.objects(fleet, fleet.clusters[args.cluster])
    print(f"# skyshare manifests --cluster {args.cluster}, from {fleet.source}")
    print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    identity = TaskIdentity(args.dag_id, args.task_id, args.run_id, map_index=args.map_index)
    live = asyncio.run(_run(taskpods.live_timeline(fleet, identity, now=time.time())))
    if live is not None:
        print(f"{identity.path}: live, from the pods on the clusters")
        print(live.table())
        return 0
    try:
        stored = metadb.stored_timeline(args.dag_id, args.run_id, args.task_id, args.map_index)
    except metadb.MetadbUnavailable:
        stored = None  # no Airflow here: the clusters were the only source
    if stored:
        print(f"{identity.path}: finished, from Airflow's XCom")
        print(Timeline.from_list(stored).table())
        return 0
    print(f"no pod of {identity.path} on any cluster and no timeline in Airflow", file=sys.stderr)
    return 1


async def _live_pods(fleet: Fleet) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """Every non-terminal provider pod on every cluster, and the clusters that did not answer."""
    async def one(name: str) -> list[tuple[str, dict]]:
        c = fleet.clusters[name]  # the cluster's own credential: every org's namespace
        listing = await kube.list_pods(c, None, labelSelector=watch.SELECTOR,
                                       fieldSelector=capacity.NON_TERMINAL)
        return [(name, p) for p in listing.get("items") or []]

    found: list[tuple[str, dict]] = []
    down: dict[str, str] = {}
    results = await asyncio.gather(*(one(n) for n in fleet.clusters), return_exceptions=True)
    for name, result in zip(fleet.clusters, results, strict=True):
        if isinstance(result, BaseException):
            down[name] = str(result)[:200]
        else:
            found.extend(result)
    return found, down


def _ti(t: TaskIdentity) -> metadb.TaskKey:
    return (t.dag_id, t.task_id, t.run_id, t.map_index)


def _orphan_rows(found: list[tuple[str, dict]],
                 states: dict[metadb.TaskKey, orphans.TaskState | None]) -> list[dict[str, Any]]:
    """The live pods whose task no longer follows them, with why."""
    rows = []
    for cluster, pod in found:
        task, meta = orphans.task_of(pod), pod["metadata"]
        if task is None:
            why = f"no readable {A_TASK} annotation or try label"
        else:
            why = orphans.why_orphaned(task[1], states[_ti(task[0])])
        if why:
            rows.append({"cluster": cluster, "namespace": meta["namespace"], "pod": meta["name"],
                         "phase": (pod.get("status") or {}).get("phase", ""),
                         "task": (meta.get("annotations") or {}).get(A_TASK, ""),
                         "why": why, "deleted": False})
    return rows


def _action(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"NOT deleted: {row['error']}"
    return "deleted" if row["deleted"] else "gone"


def _print_orphans(rows: list[dict[str, Any]], found: int, down: dict[str, str],
                   deleted: bool) -> None:
    if rows:
        print(format_table([[r["cluster"], r["pod"], r["phase"], r["task"], r["why"]]
                            + ([_action(r)] if deleted else [])
                            for r in rows],
                           ["cluster", "pod", "phase", "task", "why"]
                           + (["action"] if deleted else [])))
    else:
        print(f"no orphaned pods among {found} live provider pod(s)")
    for name, error in down.items():
        print(f"{name}: not checked, unreachable: {error}", file=sys.stderr)
    if rows and not deleted:
        print("run again with --delete to delete them", file=sys.stderr)


def _deleter(fleet: Fleet, row: dict[str, Any]) -> Cluster:
    """Who may delete the pod: the org whose namespace it is in (the cluster's own
    credential only reads where orgs have their own)."""
    cluster = fleet.clusters[row["cluster"]]
    for org in fleet.orgs:
        if cluster.tier_for(org) and cluster.namespace_of(org) == row["namespace"]:
            return cluster.as_org(org)
    return cluster


def cmd_orphans(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    found, down = asyncio.run(_run(_live_pods(fleet)))  # pods first, then the DB: see orphans
    keys = {_ti(task[0]) for _, pod in found if (task := orphans.task_of(pod))}
    try:
        states = metadb.task_states(keys)
    except metadb.MetadbUnavailable as exc:
        print(f"skyshare: {exc}", file=sys.stderr)
        return 2
    rows = _orphan_rows(found, states)
    if args.delete:
        asyncio.run(_run(_delete_rows(fleet, rows)))
    if args.json:
        print(json.dumps({"orphans": rows, "unreachable": down}, indent=2))
    else:
        _print_orphans(rows, len(found), down, args.delete)
    return 1 if down or any(r.get("error") for r in rows) else 0


async def _delete_rows(fleet: Fleet, rows: list[dict[str, Any]]) -> None:
    """Each with its org's credential; one that cannot be deleted says why, the rest go."""
    for r in rows:
        try:
            r["deleted"] = await kube.delete_pod(_deleter(fleet, r), r["namespace"], r["pod"])
        except (kube.KubeError, clients.ClusterConfigError) as exc:
            r["error"] = str(exc)[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skyshare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", help="fleet YAML (default: [skyshare] fleet_file)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fleet", help="GPUs per cluster: owner use, lent, queued")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_fleet)
    p = sub.add_parser("explain", help="where a request would go now, and why")
    p.add_argument("--gpus", required=True, help="PRODUCT:COUNT, e.g. T4:2")
    p.add_argument("--org", required=True)
    p.add_argument("--user", help="who asks (checked against the org's members)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("manifests", help="namespaces, credentials, queues and tier policy "
                       "the fleet implies on a cluster (YAML)")
    p.add_argument("--cluster", required=True)
    p.set_defaults(func=cmd_manifests)
    p = sub.add_parser("timeline", help="every attempt of a task across clusters")
    p.add_argument("dag_id")
    p.add_argument("run_id")
    p.add_argument("task_id")
    p.add_argument("--map-index", type=int, default=-1)
    p.set_defaults(func=cmd_timeline)
    p = sub.add_parser("orphans", help="pods whose task no longer follows them")
    p.add_argument("--delete", action="store_true", help="delete them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_orphans)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FleetError, PlacementError, clients.ClusterConfigError) as exc:
        print(f"skyshare: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
