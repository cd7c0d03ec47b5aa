"""Operator extra link: from a task in the Airflow UI to its skyshare timeline page."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

PREFIX = "/skyshare"


class SkyshareTimelineLink(BaseOperatorLink):
    name = "Skyshare timeline"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        query = urlencode({"dag_id": ti_key.dag_id, "run_id": ti_key.run_id,
                           "task_id": ti_key.task_id, "map_index": ti_key.map_index})
        return f"{PREFIX}/timeline?{query}"
