"""Seeds 002/003, team-a's production job: two teams share ONE cluster through Kueue cohort queues.

team-a owns the cluster's GPUs (owner tier, ClusterQueue skyshare-owner); team-b has none
and borrows them (skyshare-borrower, nominal quota 0). When team-a's production job
arrives, Kueue reclaims the borrowed GPUs; the operator re-queues team-b's experiment, which
runs again when team-a is done. This folder is DAG bundle ``team-a``: its DAGs are team-a's.
Needs: skyshare-sandbox up --cluster campus:gpus=4 --fleet dags/fleet-teams.yaml.
"""

import os

from airflow_provider_skyshare.examples import team_dag

team_a_prod = team_dag(os.path.dirname(__file__), "team_a_prod", "team-a-production", "team-a-prod", "10s")
