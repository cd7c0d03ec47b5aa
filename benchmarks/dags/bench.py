"""DAGs of the preemption benchmark: the same job, skyshare vs KubernetesPodOperator+retries."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

ARGS = {"owner": "romil"}

with DAG("bench_skyshare", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         default_args=ARGS, max_active_runs=1):
    MultiClusterGpuOperator(
        task_id="bench", gpus="T4:2", image="busybox",  # rise's, from its bundle
        annotations={"sandbox.skyshare.dev/duration": "300s"}, get_logs=False,
        max_preemptions=3, retries=0,
    )

# The same with wait_for_termination=False: what waiting for the preempted pod to be gone
# costs per move (issue 14), measured in the same run.
with DAG("bench_skyshare_nowait", start_date=datetime(2026, 1, 1), schedule=None,
         catchup=False, default_args=ARGS, max_active_runs=1):
    MultiClusterGpuOperator(
        task_id="bench", gpus="T4:2", image="busybox",
        annotations={"sandbox.skyshare.dev/duration": "300s"}, get_logs=False,
        max_preemptions=3, retries=0, wait_for_termination=False,
    )

with DAG("bench_kpo", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         default_args=ARGS, max_active_runs=1):
    KubernetesPodOperator(
        task_id="bench", name="kpo-bench", namespace="skyshare-rise", image="busybox",
        config_file=os.environ.get("KUBECONFIG"), cluster_context="rise@bair",
        in_cluster=False,
        labels={"kueue.x-k8s.io/queue-name": "skyshare-borrower",
                "kueue.x-k8s.io/priority-class": "low-priority", "skyshare-bench": "kpo"},
        annotations={"sandbox.skyshare.dev/duration": "300s"},
        priority_class_name="low-priority",
        node_selector={"nvidia.com/gpu.product": "Tesla-T4"},
        container_resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "2"},
                                                       requests={"nvidia.com/gpu": "2"}),
        get_logs=False, deferrable=True, retries=1, retry_delay=timedelta(seconds=0),
        on_finish_action="delete_pod",
    )
