"""Seeds 002/003, team-b's experiment: two teams share ONE cluster through Kueue cohort queues.

team-a owns the cluster's GPUs (owner tier, ClusterQueue skyshare-owner); team-b has none
and borrows them (skyshare-borrower, nominal quota 0). When team-a's production job
arrives, Kueue reclaims the borrowed GPUs; the operator re-queues team-b's experiment, which
runs again when team-a is done. This folder is DAG bundle ``team-b``: its DAGs are team-b's.
Needs: skyshare-sandbox up --cluster campus:gpus=4 --fleet dags/fleet-teams.yaml.
"""

import os

from airflow_provider_skyshare.examples import team_dag

team_b_dev = team_dag(os.path.dirname(__file__), "team_b_dev", "team-b-experiment", "team-b-dev", "20s")
