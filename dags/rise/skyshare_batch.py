"""Many short GPU jobs at once: a mapped task, each map index its own deferred task.

Trigger it with conf, e.g. {"jobs": 50, "duration": "1s"}. Each job ends from its trigger
(no worker resumes it), so short jobs finish as soon as their pods do; the e2e tests use it
to check that no task is lost to a race between the scheduler and the triggerer.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

with DAG(
    dag_id="skyshare_batch",
    start_date=datetime(2026, 1, 1),
    schedule=None,
    catchup=False,
    default_args={"owner": "romil"},
    params={
        "jobs": Param(50, type="integer", minimum=1, maximum=500),
        "duration": Param("1s", type="string"),
    },
    tags=["skyshare", "example"],
):

    @task
    def job_envs(**context) -> list[dict[str, str]]:
        return [{"JOB_INDEX": str(i)} for i in range(context["params"]["jobs"])]

    MultiClusterGpuOperator.partial(
        task_id="job",
        gpus="T4:1",  # the org is rise's: this DAG is in rise's bundle
        image="busybox",
        cmds=["sh", "-c", "echo job $SKYSHARE_ATTEMPT on $SKYSHARE_CLUSTER"],
        annotations={"sandbox.skyshare.dev/duration": "{{ params.duration }}"},
        max_active_tis_per_dagrun=16,
    ).expand(env_vars=job_envs())
