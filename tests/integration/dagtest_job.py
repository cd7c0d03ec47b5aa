"""Run one MultiClusterGpuOperator task through ``dag.test()`` in its own process.

The seed scenario needs tasks that overlap in time, and dag.test() runs one DAG run at a
time in-process, so each job is its own process. Prints one JSON line with the task's
state and its XCom (timeline) for the test to read. It prints READY once started and runs
the DAG when a line arrives on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from datetime import datetime, timezone

DAG_FILE = """
from datetime import datetime
from airflow.sdk import DAG
from airflow_provider_skyshare.operators import MultiClusterGpuOperator

with DAG(dag_id={dag_id}, start_date=datetime(2026, 1, 1), schedule=None,
         default_args={{"owner": {owner}}}) as dag:
    MultiClusterGpuOperator(
        task_id={task_id}, org={org}, gpus={gpus}, fleet_file={fleet},
        image="busybox", cmds=["sh", "-c", "echo hello from $SKYSHARE_CLUSTER"],
        annotations={{"sandbox.skyshare.dev/duration": {duration}}},
        max_preemptions={max_preemptions}, deferrable={deferrable} == "true", retries=0,
    )
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--task-id", required=True)
    p.add_argument("--org", required=True)
    p.add_argument("--owner", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--duration", default="10s")
    p.add_argument("--gpus", default="T4:2")
    p.add_argument("--max-preemptions", type=int, default=3)
    p.add_argument("--deferrable", choices=["true", "false"], default="true")
    p.add_argument("--dag-id", required=True)
    args = p.parse_args()

    # dag.test() (Airflow 3.3) only runs DAGs it finds in a bundle: write one file per job,
    # into the bundle of its org (the org of a task is its bundle's: docs/security.md).
    folder = os.path.join(os.environ["SKYSHARE_IT_BUNDLES"], args.org)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{args.dag_id}.py")
    with open(path + ".tmp", "w") as fh:
        fh.write(DAG_FILE.format(**{k: repr(v) for k, v in vars(args).items()}))
    os.replace(path + ".tmp", path)
    module = runpy.run_path(path)
    dag = module["dag"]
    # What dag.test() imports before it runs the task (its in-process execution API: about
    # 5 s of imports, 20 s seen on a busy machine), so that "go" starts the task, not imports.
    import airflow.api_fastapi.execution_api.app
    import airflow.sdk.execution_time.supervisor  # noqa: F401
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    # Start-up (imports, parsing) takes seconds on a busy machine: the test says when to run,
    # so its scenario's timing does not depend on how fast a process starts.
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1  # the test ended (or died) before it said go: create nothing
    dr = dag.test(logical_date=datetime.now(timezone.utc))

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=args.dag_id, run_id=dr.run_id).one()
        xcoms = {
            x.key: XComModel.deserialize_value(x)
            for x in session.query(XComModel).filter_by(dag_id=args.dag_id, run_id=dr.run_id)
        }
    print("RESULT " + json.dumps({"state": str(ti.state), "xcom": xcoms}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
