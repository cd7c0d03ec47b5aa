"""`skyshare-sandbox`: local Kubernetes clusters with Kueue and fake T4 nodes, no Docker.

  build                      compile the pinned control plane into the cache (once)
  up [--cluster SPEC]... [--fleet FILE]...
                             start clusters (default rise and bair: 1 node, 2x Tesla-T4);
                             each fleet's orgs get their namespaces, credentials, queues
                             and tier policy there (default: each cluster is its own org's)
  status                     components, nodes, GPUs, Kueue workloads per cluster
  kubeconfig                 print the kubeconfig path (contexts NAME: admin, NAME-operator:
                             the cluster's own, ORG@NAME: each org's, in its namespace)
  connections [--fleet FILE]... [--multi-team] [--json]
                             print one Airflow `kubernetes` connection per connection_id the
                             fleets name (default: those of `up`): each (org, cluster) and each
                             cluster's own, as AIRFLOW_CONN_NAME='JSON' lines, the kubeconfig
                             inline; --multi-team: each org's scoped to its team
                             (AIRFLOW_CONN__TEAM___NAME); --json: one JSON object
  down                       stop everything and delete the state
  stop-component CLUSTER C   C in apiserver, scheduler, controllers, kueue, kwok (fault tests)
  start-component CLUSTER C
  node-down CLUSTER [NODE]   NODE (default CLUSTER-gpu-0) stops heartbeating: NotReady after
                             12 s, tainted, its pods evicted 10 s later (fault tests, demos)
  node-up CLUSTER [NODE]     it heartbeats again; returns once it is Ready and untainted
  log CLUSTER TEXT...        every container on CLUSTER writes these lines now (each pod's
                             log is the cluster's file: live logs, demos)
SPEC: NAME[:nodes=N,gpus=G,product=Tesla-T4,jobs=0|1]  (jobs=1: batch/Jobs, for MultiKueue)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from airflow_provider_skyshare.fleet import FleetError
from airflow_provider_skyshare.sandbox import build, cluster, connections, paths, status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="skyshare-sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    up = sub.add_parser("up")
    up.add_argument("--cluster", action="append", default=[], metavar="SPEC")
    up.add_argument("--fleet", action="append", default=[], metavar="FILE")
    sub.add_parser("status")
    sub.add_parser("kubeconfig")
    conns = sub.add_parser("connections")
    conns.add_argument("--fleet", action="append", default=[], metavar="FILE")
    conns.add_argument("--multi-team", action="store_true")
    conns.add_argument("--json", action="store_true")
    sub.add_parser("down")
    for name in ("stop-component", "start-component"):
        c = sub.add_parser(name)
        c.add_argument("cluster")
        c.add_argument("component", choices=cluster.COMPONENTS)
    for name in ("node-down", "node-up"):
        c = sub.add_parser(name)
        c.add_argument("cluster")
        c.add_argument("node", nargs="?")
    log = sub.add_parser("log")
    log.add_argument("cluster")
    log.add_argument("text", nargs="+")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            return build.main()
        if args.cmd == "up":
            start = time.monotonic()
            specs = [cluster.ClusterSpec.parse(s) for s in args.cluster]
            state = cluster.up(specs, args.fleet)
            print(f"sandbox up in {time.monotonic() - start:.1f}s: {', '.join(state.clusters)}; "
                  f"kubeconfig {paths.state_dir() / 'kubeconfig'}")
            return 0
        if args.cmd == "status":
            print(status.table(cluster.State.load()))
            return 0
        if args.cmd == "kubeconfig":
            print(paths.state_dir() / "kubeconfig")
            return 0
        if args.cmd == "connections":
            return _print_connections(args)
        if args.cmd == "down":
            cluster.down()
            print("sandbox stopped and its state removed")
            return 0
        state = cluster.State.load()
        if args.cmd == "log":
            path = cluster.write_log(state, args.cluster, *args.text)
            print(f"{args.cluster}: {len(args.text)} line(s) appended to {path}")
            return 0
        if args.cmd == "node-down":
            node = cluster.node_down(state, args.cluster, args.node)
            print(f"{args.cluster} {node}: heartbeat stopped (NotReady after "
                  f"{cluster.NODE_MONITOR_GRACE_SECONDS}s, pods evicted "
                  f"{cluster.EVICTION_TOLERATION_SECONDS}s later)")
            return 0
        if args.cmd == "node-up":
            node = cluster.node_up(state, args.cluster, args.node)
            print(f"{args.cluster} {node}: heartbeating, Ready and untainted")
            return 0
        if args.cmd == "stop-component":
            cluster.stop_component(state, args.cluster, args.component)
        else:
            cluster.start_component(state, args.cluster, args.component)
        done = "stopped" if args.cmd == "stop-component" else "started"
        print(f"{args.cluster} {args.component}: {done}")
        return 0
    except (cluster.SandboxError, build.BuildError, FleetError) as exc:
        print(f"skyshare-sandbox: {exc}", file=sys.stderr)
        return 1


def _print_connections(args: argparse.Namespace) -> int:
    env = connections.build(args.fleet, args.multi_team)
    if not env:
        print("skyshare-sandbox: the fleets name no connection_id (they use kubeconfig "
              "contexts). Fix: pass --fleet FILE with clusters[].connection_id and "
              "access: {connection_id: ...}", file=sys.stderr)
        return 1
    print(render(env, args.json))
    return 0


def render(env: dict[str, str], as_json: bool = False) -> str:
    """One JSON object, or NAME='VALUE' lines a shell sources (`set -a; . FILE`)."""
    if as_json:
        return json.dumps(env, indent=2)
    return "\n".join(f"{name}={shlex.quote(value)}" for name, value in env.items())


if __name__ == "__main__":
    sys.exit(main())
