"""A bair job whose first try pauses between creating its pod and deferring: the window in
which the HA test kills its Celery worker (a machine lost mid-placement)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from airflow.sdk import DAG

from airflow_provider_skyshare.operators import MultiClusterGpuOperator


class SlowToDefer(MultiClusterGpuOperator):
    def execute(self, context):
        self._first_try = context["ti"].try_number == 1
        return super().execute(context)

    def defer(self, **kwargs):
        if self._first_try:
            self.log.info("pausing before deferring (the test kills this worker now)")
            time.sleep(120)
        super().defer(**kwargs)


with DAG(dag_id="bair_slow_defer", start_date=datetime(2026, 1, 1), schedule=None,
         catchup=False, default_args={"owner": "abbeel"}, tags=["skyshare", "ha"]):
    # The first try's pod would run 10 minutes: only the retry's clean-up can end it.
    SlowToDefer(task_id="job", gpus="T4:1", image="busybox",
                annotations={"sandbox.skyshare.dev/duration":
                             "{{ '600s' if ti.try_number == 1 else '5s' }}"},
                retries=1, retry_delay=timedelta(seconds=1))
