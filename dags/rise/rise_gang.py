"""A multi-node job: two pods of 2 T4 each that start together and die together (a gang).

In rise's DAG bundle, so the job is rise's. It runs on dags/fleet-gangs.yaml, where rise
owns den and bair owns lab, two nodes each: the gang fits on either cluster whole, never in
halves. Needs: skyshare-sandbox up --cluster den:nodes=2 --cluster lab:nodes=2
--fleet dags/fleet-gangs.yaml (docs/operator.md, "Multi-node jobs").
"""

import os

from airflow_provider_skyshare.examples import gang_dag

rise_gang = gang_dag(os.path.dirname(__file__))
