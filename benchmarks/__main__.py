"""`./dev bench`: every speed figure of the provider against a baseline in the same run.

  (a) preemption -> replacement pod created     vs KubernetesPodOperator + Airflow retries
  (b) triggerer load at N followed pods          vs KubernetesPodTrigger
  (c) placement latency at 1/2/5/10 clusters     vs sequential probing
  (d) the romil/abbeel scenario wall time through real Airflow
  (e) eviction on one cluster -> running on another: MultiKueue vs skyshare, same event
  (f) scale: N followed pods on 20 clusters in one triggerer vs KubernetesPodTrigger
  (g) preemption storm: N borrowed pods preempted at once, one triggerer; calm baseline of 1
  (h) database bytes per deferred task (trigger row, XCom) vs KubernetesPodTrigger
  (i) first placement: task start in the worker -> pod created, at 1/10/20 clusters vs KPO

Writes benchmarks/results/<name>.json, results.md and PNG plots. Not part of the tests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, bench_dir, sandbox_up, save


def part_a(args) -> dict:
    from benchmarks import preemption

    kubeconfig = sandbox_up()
    return preemption.run(kubeconfig, args.preemptions, args.baseline_preemptions)


def part_b(args) -> dict:
    from benchmarks import trigger_load

    kubeconfig = sandbox_up("bench:nodes=5,gpus=1")
    return trigger_load.run([int(n) for n in args.n.split(",")], args.window, kubeconfig)


def part_c(args) -> dict:
    from benchmarks import placement_latency

    sizes = [int(k) for k in args.clusters.split(",")]
    names = ["rise", "bair"] + [f"p{i}" for i in range(3, max(sizes) + 1)]
    kubeconfig = sandbox_up("rise", "bair", *[f"{n}:nodes=1,gpus=2" for n in names[2:max(sizes)]])
    return placement_latency.run(names, sizes, kubeconfig)


def part_d(args) -> dict:
    from airflow_provider_skyshare.sandbox.api import Sandbox
    from scripts.scenario import Airflow, run_scenario

    sandbox = Sandbox.ensure_up()
    af = Airflow(home=Path(tempfile.mkdtemp(prefix="skyshare-bench-d-")), port=28282,
                 kubeconfig=sandbox.kubeconfig)
    t = time.monotonic()
    af.start()
    started = time.monotonic() - t

    def admin_pods(cluster, task_id):
        pods = sandbox.core_v1(cluster).list_pod_for_all_namespaces(
            label_selector=f"skyshare.dev/task-id={task_id}").items
        return [(p.metadata.name, p.status.phase) for p in pods]

    try:
        result = run_scenario(af, admin_pods, {"romil": "10s", "abbeel": "5s"})
    finally:
        af.stop()
    train = result.timelines["romil-train"]
    return {"airflow_start_s": started, "scenario_wall_s": result.wall_seconds,
            "abbeel_submitted_to_romil_train_running_s": result.recovery_seconds,
            "preemption_to_replacement_ms": (train[1]["placed_at"] - train[0]["ended_at"]) * 1000
            if len(train) > 1 else None, "states": result.states, "timeline": result.table()}


def _fleet_sandbox(n: int) -> tuple[str, Path]:
    """The sandbox with clusters rise, bair, p3..pN hosting the orgs of the N-cluster fleet
    (the seed's shape); returns the kubeconfig and that fleet file."""
    from benchmarks import fleets

    names = fleets.cluster_names(n)
    fleet = fleets.write(names, bench_dir())
    return sandbox_up(*[f"{c}:nodes=1,gpus=2" for c in names], fleet=fleet), fleet


def part_h(args) -> dict:
    from benchmarks import db_cost, fleets

    kubeconfig, big = _fleet_sandbox(20)
    return db_cost.run(kubeconfig, {"seed fleet (2 clusters)": str(fleets.SEED),
                                    "20 clusters": str(big)}, bench_dir())


def part_i(args) -> dict:
    from benchmarks import first_placement

    sizes = [int(k) for k in args.first_clusters.split(",")]
    kubeconfig, _ = _fleet_sandbox(max(sizes))
    return first_placement.run(kubeconfig, sizes, args.first_samples, bench_dir())


def part_e(args) -> dict:
    from benchmarks import fleets, multikueue

    # the MultiKueue manager (no GPU nodes) and its two workers; wa is bair's, wb rise's
    fleet = fleets.write([multikueue.WA, multikueue.WB], bench_dir(),
                         rise_owns=(multikueue.WB,), stem="fleet-mk")
    kubeconfig = sandbox_up(f"{multikueue.MANAGER}:nodes=0,gpus=0,jobs=1",
                            f"{multikueue.WA}:nodes=1,gpus=2,jobs=1",
                            f"{multikueue.WB}:nodes=1,gpus=2,jobs=1", fleet=fleet)
    return multikueue.run(kubeconfig, str(fleet), args.evictions)


def part_f(args) -> dict:
    from benchmarks import scale

    clusters = scale.CLUSTERS[:args.scale_clusters]
    kubeconfig = sandbox_up(*[f"{c}:nodes={scale.NODES},gpus=1" for c in clusters])
    return scale.run(kubeconfig, [int(n) for n in args.scale.split(",")], args.window,
                     clusters)


def part_g(args) -> dict:
    from benchmarks import fleets, storm

    sizes = [int(k) for k in args.storm.split(",")]
    nodes = storm.nodes_for(max(sizes))
    fleet = fleets.write([storm.SA, storm.SB], bench_dir(), rise_owns=(storm.SB,),
                         stem="fleet-storm")
    kubeconfig = sandbox_up(*[f"{c}:nodes={nodes},gpus={storm.GPUS_PER_NODE}"
                              for c in (storm.SA, storm.SB)], fleet=fleet)
    return storm.run(kubeconfig, sizes, str(fleet))


PARTS = {"a": ("preemption", part_a), "b": ("trigger_load", part_b),
         "c": ("placement_latency", part_c), "d": ("scenario", part_d),
         "e": ("multikueue", part_e), "f": ("scale", part_f), "g": ("storm", part_g),
         "h": ("db_cost", part_h), "i": ("first_placement", part_i)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="c,b,a,d,h,i,e,g,f", help="parts to run, e.g. a,c")
    p.add_argument("--preemptions", type=int, default=20)
    p.add_argument("--baseline-preemptions", type=int, default=5)
    p.add_argument("--n", default="100,500", help="followed pods for (b)")
    p.add_argument("--window", type=float, default=60.0, help="seconds per (b) window")
    p.add_argument("--clusters", default="1,2,5,10")
    p.add_argument("--evictions", type=int, default=3, help="rounds per system, (e)")
    p.add_argument("--scale", default="1000,5000", help="followed pods for (f)")
    p.add_argument("--scale-clusters", type=int, default=20, help="clusters for (f)")
    p.add_argument("--storm", default="1,200", help="tasks preempted at once, (g)")
    p.add_argument("--first-clusters", default="1,10,20", help="fleet sizes for (i)")
    p.add_argument("--first-samples", type=int, default=10, help="placements per size, (i)")
    args = p.parse_args()
    for key in args.only.split(","):
        name, fn = PARTS[key.strip()]
        # each part on its own clusters only: another part's 20 idle control planes (or 50
        # KWOK nodes) take the CPU this one measures
        subprocess.run([sys.executable, "-m", "airflow_provider_skyshare.sandbox.cli", "down"],
                       check=True)
        print(f"== ({key}) {name}", flush=True)
        data = fn(args)
        path = save(name, data)
        print(f"   -> {path}", flush=True)
    from benchmarks.report import write

    print(write(RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
