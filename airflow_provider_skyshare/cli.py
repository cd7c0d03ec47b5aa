"""`airflow skyshare` (or `skyshare` for short): the fleet as its users see it.

  skyshare fleet [--nodes]               who uses which GPUs, who lends to whom, what queues
  skyshare explain --gpus T4:2 --org X   where a request would go now, and what it would preempt
  skyshare timeline DAG RUN TASK         every attempt of a task, across clusters
  skyshare orphans [--delete]            pods whose task no longer follows them (Airflow DB)
  skyshare manifests --cluster NAME      what the fleet implies on a cluster: each org's
                                         namespace, credential, queue and the tier policy

Every command takes --fleet FILE and prints with -o/--output table|json|yaml|plain, as
Airflow's own commands do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
from airflow_provider_skyshare.fleetfile import configured, configured_variable, from_variable, load
from airflow_provider_skyshare.names import A_TASK
from airflow_provider_skyshare.placement import PlacementError, Request, choose, parse_gpus
from airflow_provider_skyshare.pods import TaskIdentity
from airflow_provider_skyshare.snapshot import Holder
from airflow_provider_skyshare.timeline import HEADERS, Timeline


def _airflow_setting(key: str) -> str | None:
    """``[skyshare] key`` from the environment, else from Airflow's configuration."""
    import os

    found = os.environ.get(f"AIRFLOW__SKYSHARE__{key.upper()}")
    if found:
        return found
    try:
        from airflow.sdk import conf

        return conf.get("skyshare", key, fallback=None)
    except Exception:  # noqa: BLE001 - Airflow not configured: ask for --fleet
        return None


def _fleet(path: str | None) -> Fleet:
    """--fleet FILE, else the Airflow Variable [skyshare] fleet_variable names, else
    AIRFLOW__SKYSHARE__FLEET_FILE, SKYSHARE_FLEET_FILE, [skyshare] fleet_file (the first)."""
    import os

    variable = None if path else configured_variable(_airflow_setting("fleet_variable"))
    if variable:
        return from_variable(variable)
    path = (path or os.environ.get("AIRFLOW__SKYSHARE__FLEET_FILE")
            or os.environ.get("SKYSHARE_FLEET_FILE") or _airflow_setting("fleet_file"))
    if not path:
        raise FleetError("(no fleet file)", "--fleet", "no fleet file given",
                         "pass --fleet FILE or set AIRFLOW__SKYSHARE__FLEET_FILE (or "
                         "AIRFLOW__SKYSHARE__FLEET_VARIABLE)")
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


OUTPUTS = ("table", "json", "yaml", "plain")
Section = tuple[str, list[dict[str, Any]]]  # a heading ("" for none) and its rows


def records(cells: list[list[str]], headers: list[str]) -> list[dict[str, str]]:
    """Text cells under their headers, as the rows Airflow's console prints."""
    return [dict(zip(headers, row, strict=True)) for row in cells]


def output_of(args: argparse.Namespace) -> str:
    """--json predates --output: both still work."""
    return "json" if getattr(args, "json", False) else args.output


def render(output: str, document: Any, sections: list[Section]) -> None:
    """Print as Airflow's own list commands do (`airflow connections list -o ...`).

    json and yaml print one document with the values as they are (numbers stay numbers), so a
    script reads one parseable answer; table and plain print each section as its own table.
    """
    from airflow.cli.simple_table import AirflowConsole  # 1 s to import: only when printing

    console = AirflowConsole()
    if output == "json":
        console.print_as_json(document)
    elif output == "yaml":
        console.print_as_yaml(document)
    else:
        for number, (heading, rows) in enumerate(sections):
            if heading:
                print(("\n" if number else "") + heading)
            console.print_as(rows, output)


def cmd_fleet(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    snapshot = asyncio.run(_run(capacity.probe(fleet)))
    if args.nodes:
        render(output_of(args), {"nodes": views.node_rows(fleet, snapshot)},
               [("Free GPUs per node", records(views.node_cells(fleet, snapshot), views.NODE_HEADERS))])
        return 0
    render(output_of(args),
           {"clusters": views.fleet_rows(fleet, snapshot),
            "tiers": views.tier_rows(fleet, snapshot=snapshot)},
           [("GPUs per cluster", records(views.fleet_cells(fleet, snapshot), views.FLEET_HEADERS)),
            ("What each org may use where",
             records(views.tier_cells(fleet, snapshot=snapshot), views.TIER_HEADERS))])
    return 0


def _victim(h: Holder) -> dict[str, Any]:
    return {"namespace": h.namespace, "pod": h.pod, "gpus": h.gpus, "org": h.org or "?",
            "task": h.task or "?"}


def cmd_explain(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    product, count = parse_gpus(args.gpus)
    request = Request(product, count, args.org, args.user, nodes=args.nodes)
    snapshot = asyncio.run(_run(capacity.probe(fleet)))
    decision = choose(request, fleet, snapshot, now=time.time())
    hit = views.victims(decision, snapshot)
    sections: list[Section] = [
        (decision.summary(), [{"cluster": r.cluster, "owner": r.owner, "tier": r.tier, "free": r.free,
                               "decision": r.verdict, "why": r.reason} for r in decision.rows]),
        ("Would preempt (Kueue reclaims borrowed GPUs)", [_victim(h) for h in hit]),
        (f"What {args.org} may use where",
         records(views.tier_cells(fleet, only=args.org, snapshot=snapshot), views.TIER_HEADERS))]
    render(output_of(args), {
        "summary": decision.summary(),
        "tiers": views.tier_rows(fleet, only=args.org, snapshot=snapshot),
        "rows": [asdict(r) for r in decision.rows],
        "preempts": [asdict(h) for h in hit],
    }, sections if hit else [sections[0], sections[2]])
    return 0


def cmd_manifests(args: argparse.Namespace) -> int:
    """What the fleet implies on one cluster: YAML for `kubectl apply --server-side -f -`;
    json is one List object, which kubectl applies as well."""
    fleet = _fleet(args.fleet)
    if args.cluster not in fleet.clusters:
        raise FleetError(fleet.source, "clusters", f"unknown cluster {args.cluster!r}",
                         f"use one of: {', '.join(fleet.clusters)}")
    objects = tenancy.objects(fleet, fleet.clusters[args.cluster])
    if args.output == "yaml":
        import yaml

        print(f"# skyshare manifests --cluster {args.cluster}, from {fleet.source}")
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    elif args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        render(args.output, None, [("", [{
            "kind": o["kind"], "namespace": o["metadata"].get("namespace", ""),
            "name": o["metadata"]["name"]} for o in objects])])
    return 0


def _print_timeline(output: str, path: str, source: str, timeline: Timeline) -> None:
    render(output, {"task": path, "source": source, "attempts": timeline.to_list()},
           [(f"{path}: {source}", records(timeline.rows(), HEADERS))])


def cmd_timeline(args: argparse.Namespace) -> int:
    fleet = _fleet(args.fleet)
    identity = TaskIdentity(args.dag_id, args.task_id, args.run_id, map_index=args.map_index)
    live = asyncio.run(_run(taskpods.live_timeline(fleet, identity, now=time.time())))
    if live is not None:
        _print_timeline(output_of(args), identity.path, "live, from the pods on the clusters", live)
        return 0
    try:
        stored = metadb.stored_timeline(args.dag_id, args.run_id, args.task_id, args.map_index)
    except metadb.MetadbUnavailable:
        stored = None  # no Airflow here: the clusters were the only source
    if stored:
        _print_timeline(output_of(args), identity.path, "finished, from Airflow's XCom",
                        Timeline.from_list(stored))
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


def _print_orphans(output: str, rows: list[dict[str, Any]], found: int, down: dict[str, str],
                   deleted: bool) -> None:
    if rows or output in ("json", "yaml"):
        shown = [{k: r[k] for k in ("cluster", "pod", "phase", "task", "why")}
                 | ({"action": _action(r)} if deleted else {}) for r in rows]
        render(output, {"orphans": rows, "unreachable": down}, [("", shown)])
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
    _print_orphans(output_of(args), rows, len(found), down, args.delete)
    return 1 if down or any(r.get("error") for r in rows) else 0


async def _delete_rows(fleet: Fleet, rows: list[dict[str, Any]]) -> None:
    """Each with its org's credential; one that cannot be deleted says why, the rest go."""
    for r in rows:
        try:
            r["deleted"] = await kube.delete_pod(_deleter(fleet, r), r["namespace"], r["pod"])
        except (kube.KubeError, clients.ClusterConfigError) as exc:
            r["error"] = str(exc)[:200]


@dataclass(frozen=True)
class Option:
    """One command-line option, in the terms both argparse and Airflow's `Arg` take."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A subcommand of both `skyshare` and `airflow skyshare`: one table, so they cannot drift."""

    name: str
    help: str
    func: Callable[[argparse.Namespace], int]
    options: tuple[Option, ...]


FLEET = Option(("--fleet",), {"help": "fleet YAML (default: the Airflow Variable "
                                        "skyshare.fleet_variable names, else "
                                        "AIRFLOW__SKYSHARE__FLEET_FILE, SKYSHARE_FLEET_FILE, "
                                        "Airflow's skyshare.fleet_file)"})
OUTPUT = Option(("-o", "--output"), {
    "choices": OUTPUTS, "default": "table", "metavar": "(table, json, yaml, plain)",
    "help": "Output format. Allowed values: json, yaml, plain, table (default: table)"})
JSON = Option(("--json",), {"action": "store_true", "help": "the same as --output json"})
COMMANDS = (
    Command("fleet", "GPUs per cluster: owner use, lent, queued (--nodes: free GPUs per node)",
            cmd_fleet, (FLEET, Option(("--nodes",), {
                "action": "store_true",
                "help": "per node instead: GPU product, total, free, borrowed (reclaimable)"}),
                        OUTPUT, JSON)),
    Command("explain", "where a request would go now, and why", cmd_explain, (
        FLEET, Option(("--gpus",), {"required": True, "help": "PRODUCT:COUNT, e.g. T4:2"}),
        Option(("--org",), {"required": True, "help": "the org that asks"}),
        Option(("--user",), {"help": "who asks (checked against the org's members)"}),
        Option(("--nodes",), {"type": int, "default": 1,
                              "help": "pods (nodes) of a multi-node job, each with --gpus"}),
        OUTPUT, JSON)),
    Command("manifests", "namespaces, credentials, queues and tier policy the fleet implies on "
            "a cluster (YAML for kubectl apply)", cmd_manifests, (
                FLEET, Option(("--cluster",), {"required": True, "help": "a cluster of the fleet"}),
                Option(("-o", "--output"), {
                    "choices": ("yaml", "json", "table", "plain"), "default": "yaml",
                    "metavar": "(yaml, json, table, plain)",
                    "help": "yaml (default) or json (a List) to apply; table or plain to read"}))),
    Command("timeline", "every attempt of a task across clusters", cmd_timeline, (
        Option(("dag_id",), {"help": "the DAG id"}), Option(("run_id",), {"help": "the run id"}),
        Option(("task_id",), {"help": "the task id"}),
        Option(("--map-index",), {"type": int, "default": -1, "help": "a mapped task's index"}),
        FLEET, OUTPUT, JSON)),
    Command("orphans", "pods whose task no longer follows them", cmd_orphans, (
        FLEET, Option(("--delete",), {"action": "store_true", "help": "delete them"}),
        OUTPUT, JSON)),
)


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A command's exit status; the errors a user can fix are one line, status 2."""
    try:
        return func(args)
    except (FleetError, PlacementError, clients.ClusterConfigError) as exc:
        print(f"skyshare: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    """`skyshare`: the short form of `airflow skyshare`. `--fleet` goes before or after the
    subcommand (before: as this CLI always took it)."""
    top = argparse.ArgumentParser(prog="skyshare", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument(*FLEET.flags, **FLEET.kwargs)
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        for o in command.options:
            # SUPPRESS: an absent subcommand --fleet leaves the top-level one standing
            p.add_argument(*o.flags, **(o.kwargs | {"default": argparse.SUPPRESS}
                                        if o is FLEET else o.kwargs))
        p.set_defaults(func=command.func)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
