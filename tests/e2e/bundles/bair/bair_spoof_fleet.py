"""A DAG of bair's bundle that brings a fleet file of its own: refused when parsed."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

# Its own fleet, in which bair would own every cluster.
MINE = os.path.join(tempfile.gettempdir(), "skyshare-spoof-fleet.yaml")
with open(os.environ["AIRFLOW__SKYSHARE__FLEET_FILE"].split(",")[0]) as src, \
        open(MINE, "w") as dst:
    dst.write(src.read().replace("owner: rise", "owner: bair"))

with DAG(dag_id="spoof_fleet", start_date=datetime(2026, 1, 1), schedule=None, catchup=False,
         default_args={"owner": "abbeel"}):
    MultiClusterGpuOperator(task_id="claim", gpus="T4:1", image="busybox", fleet_file=MINE)
