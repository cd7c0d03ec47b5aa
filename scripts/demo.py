"""The main job: the romil/abbeel scenario on the local clusters through a real Airflow.

Run by ``./dev demo`` after ``skyshare-sandbox up``. Leaves Airflow running for the UI; a
second run reuses it. ``--stop`` (or ``--teardown``; ``./dev stop``) only stops it: without
``--shape``, every shape's demo Airflow that has a home.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.scenario import Airflow, ScenarioError, Shape, run_scenario


def home_of(shape: Shape) -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "skyshare-demo" / ("airflow" if shape is Shape.STANDALONE
                                      else f"airflow-{shape.value}")


def stop(shapes: list[Shape], port: int) -> int:
    """Stop the demo's Airflow of each shape; the sandbox is left running (./dev stop --sandbox)."""
    for shape in shapes:
        home = home_of(shape)
        if not home.exists():
            print(f"no {shape.value} demo Airflow in {home}")
            continue
        Airflow(home=home, port=port, shape=shape).stop()
        print(f"stopped the {shape.value} Airflow in {home}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", "--teardown", dest="stop", action="store_true",
                        help="only stop the demo's Airflow (does not run the scenario)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SKYSHARE_DEMO_PORT", 8080)))
    parser.add_argument("--shape", choices=[s.value for s in Shape], default=None,
                        help="standalone: airflow standalone on SQLite (default); production: "
                        "PostgreSQL, Redis, Celery, two schedulers, workers and triggerers. "
                        "With --stop and no --shape: every shape")
    parser.add_argument("--romil-duration", default="30s")
    parser.add_argument("--abbeel-duration", default="10s")
    args = parser.parse_args()
    if args.stop:
        return stop([Shape(args.shape)] if args.shape else list(Shape), args.port)

    from airflow_provider_skyshare.sandbox.api import Sandbox

    shape = Shape(args.shape or Shape.STANDALONE.value)
    sandbox = Sandbox.ensure_up()
    af = Airflow(home=home_of(shape), port=args.port, kubeconfig=sandbox.kubeconfig, shape=shape)
    print(f"==> Airflow ({shape.value} shape) in {af.home}")
    af.start()

    def admin_pods(cluster: str, task_id: str):
        api = sandbox.core_v1(cluster)
        pods = api.list_pod_for_all_namespaces(  # every org's namespace
            label_selector=f"skyshare.dev/task-id={task_id}").items
        return [(p.metadata.name, p.status.phase) for p in pods]

    try:
        result = run_scenario(af, admin_pods, {"romil": args.romil_duration,
                                               "abbeel": args.abbeel_duration})
    except ScenarioError as exc:
        print(f"scenario failed: {exc}", file=sys.stderr)
        return 1
    print()
    print(result.table())
    print()
    for task, state in sorted(result.states.items()):
        print(f"  {task:<13} {state}")
    if result.recovery_seconds is not None:
        print(f"\nabbeel submitted -> romil-train running again: {result.recovery_seconds:.1f} s "
              "(romil-train waits on rise for romil to finish: bair is in cooldown for it)")
    train = result.timelines.get("romil-train") or []
    if len(train) > 1 and train[0]["ended_at"]:
        print(f"preemption seen -> replacement pod created: "
              f"{(train[1]['placed_at'] - train[0]['ended_at']) * 1000:.0f} ms")
    print(f"scenario wall time: {result.wall_seconds:.1f} s")
    print(f"\nAirflow UI: {af.url}  (local demo: no login needed, everyone is admin)")
    if shape is Shape.PRODUCTION:
        print(f"each component logs to {af.home}/<component>.log")
    print("stop it with: ./dev stop  (add --sandbox to stop the local clusters too)")
    ok = all(s == "success" for s in result.states.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
