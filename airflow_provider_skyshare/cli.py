"""`skyshare`: the fleet as its users see it.

  skyshare fleet                         who uses which GPUs, who lends to whom, what queues
  skyshare explain --gpus T4:2 --org X   where a request would go now, and what it would preempt
  skyshare timeline DAG RUN TASK         every attempt of a task, across clusters
  skyshare orphans [--delete]            pods whose task no longer follows them (Airflow DB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from airflow_provider_skyshare import capacity, clients, kube, orphans, views, watch
from airflow_provider_skyshare.fleet import Fleet, FleetError, load
from airflow_provider_skyshare.placement import PlacementError, Request, choose, parse_gpus
from airflow_provider_skyshare.pods import TaskIdentity, attempt_of, timeline_from_pod
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
    return load(path)


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
        print(json.dumps(views.fleet_rows(fleet, snapshot), indent=2))
    else:
        print(views.fleet_table(fleet, snapshot))
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
            "rows": [asdict(r) for r in decision.rows],
            "preempts": [asdict(h) for h in views.victims(decision, snapshot)],
        }, indent=2))
    else:
        print(views.explain_text(decision, snapshot))
    return 0


async def find_timeline(fleet: Fleet, identity: TaskIdentity) -> Timeline | None:
    """Rebuild a task's timeline from its newest pod (any try) on any cluster."""
    async def one(name: str) -> list[tuple[str, dict]]:
        c = fleet.clusters[name]
        try:
            listing = await kube.list_pods(c, c.namespace,
                                           labelSelector=identity.selector(this_try=False))
        except kube.KubeError:
            return []
        return [(name, p) for p in listing.get("items") or []]

    found = [x for xs in await asyncio.gather(*(one(n) for n in fleet.clusters)) for x in xs]
    if not found:
        return None
    cluster, pod = max(found, key=lambda item: (
        int(item[1]["metadata"]["labels"].get("skyshare.dev/try", 0)), attempt_of(item[1])))
    from airflow_provider_skyshare import outcomes

    outcome = outcomes.classify(pod)
    return timeline_from_pod(cluster, pod, why="").update_last(
        outcome="" if outcome.kind.value in ("Pending", "Running") else outcome.kind.value,
        reason=outcome.reason,
    )


def _timeline_from_airflow(dag_id: str, run_id: str, task_id: str) -> list[dict] | None:
    try:
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            for key in ("return_value", "skyshare_timeline"):
                row = session.query(XComModel).filter_by(
                    dag_id=dag_id, run_id=run_id, task_id=task_id, key=key).first()
                if row is not None:
                    return XComModel.deserialize_value(row)
    except Exception:  # noqa: BLE001 - no Airflow DB here: the clusters are the only source
        return None
    return None


def cmd_timeline(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    identity = TaskIdentity(args.dag_id, args.task_id, args.run_id, map_index=args.map_index)
    live = asyncio.run(_run(find_timeline(fleet, identity)))
    if live is not None:
        print(f"{identity.path}: live, from the pods on the clusters")
        print(live.table())
        return 0
    stored = _timeline_from_airflow(args.dag_id, args.run_id, args.task_id)
    if stored:
        print(f"{identity.path}: finished, from Airflow's XCom")
        print(Timeline.from_list(stored).table())
        return 0
    print(f"no pod of {identity.path} on any cluster and no timeline in Airflow", file=sys.stderr)
    return 1


async def _live_pods(fleet: Fleet) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """Every non-terminal provider pod on every cluster, and the clusters that did not answer."""
    async def one(name: str) -> list[tuple[str, dict]]:
        c = fleet.clusters[name]
        listing = await kube.list_pods(c, c.namespace, labelSelector=watch.SELECTOR,
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


def _ti(t: TaskIdentity) -> tuple[str, str, str, int]:
    return (t.dag_id, t.task_id, t.run_id, t.map_index)


def _task_states(keys: set[tuple[str, str, str, int]]) -> dict[tuple, orphans.TaskState | None]:
    """Each task instance's state and try from Airflow's metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    states: dict[tuple, orphans.TaskState | None] = {}
    with create_session() as session:
        for dag_id, task_id, run_id, map_index in sorted(keys):
            row = session.query(TaskInstance.state, TaskInstance.try_number).filter_by(
                dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=map_index).first()
            states[(dag_id, task_id, run_id, map_index)] = (
                orphans.TaskState(str(row[0]) if row[0] else None, int(row[1] or 0))
                if row else None)
    return states


def cmd_orphans(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    found, down = asyncio.run(_run(_live_pods(fleet)))  # pods first, then the DB: see orphans
    owned = [(cluster, pod, orphans.task_of(pod)) for cluster, pod in found]
    keys = {_ti(task[0]) for _, _, task in owned if task}
    try:
        states = _task_states(keys)
    except Exception as exc:  # noqa: BLE001 - say what is missing, not a traceback
        print(f"skyshare: cannot read Airflow's metadata DB ({type(exc).__name__}: {exc}). "
              "Run this where Airflow is configured (AIRFLOW_HOME / sql_alchemy_conn).",
              file=sys.stderr)
        return 2
    rows = []
    for cluster, pod, task in owned:
        meta = pod["metadata"]
        if task is None:
            why = "no readable skyshare.dev/task annotation or try label"
        else:
            t, pod_try = task
            why = orphans.why_orphaned(pod_try, states[_ti(t)])
        if why:
            rows.append({"cluster": cluster, "namespace": meta["namespace"], "pod": meta["name"],
                         "phase": (pod.get("status") or {}).get("phase", ""),
                         "task": (meta.get("annotations") or {}).get("skyshare.dev/task", ""),
                         "why": why, "deleted": False})
    if args.delete:
        async def delete_all() -> None:
            for r in rows:
                r["deleted"] = await kube.delete_pod(fleet.clusters[r["cluster"]],
                                                     r["namespace"], r["pod"])
        asyncio.run(_run(delete_all()))
    if args.json:
        print(json.dumps({"orphans": rows, "unreachable": down}, indent=2))
    else:
        if rows:
            print(format_table([[r["cluster"], r["pod"], r["phase"], r["task"], r["why"]]
                                + (["deleted" if r["deleted"] else "gone"] if args.delete else [])
                                for r in rows],
                               ["cluster", "pod", "phase", "task", "why"]
                               + (["action"] if args.delete else [])))
        else:
            print(f"no orphaned pods among {len(found)} live provider pod(s)")
        for name, error in down.items():
            print(f"{name}: not checked, unreachable: {error}", file=sys.stderr)
        if rows and not args.delete:
            print("run again with --delete to delete them", file=sys.stderr)
    return 1 if down else 0


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
