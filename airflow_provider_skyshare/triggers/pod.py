"""The trigger that follows a task's pod and moves it when it is preempted.

Thin: all the work is in supervisor.Supervisor, which the worker runs too. The kwargs are
the supervisor's JSON state; the event carries the same state, because dag.test() (Airflow
3.3) drops defer kwargs and execute_complete must not need them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_skyshare.supervisor import Supervisor


class MultiClusterPodTrigger(BaseTrigger):
    """Watch the current attempt's pod; place again on preemption; fire once with a verdict."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self.state = state
        self._supervisor: Supervisor | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {"state": self.state})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        sup = self._supervisor = Supervisor.from_state(self.state, log=self.log)
        try:
            await sup.resume()
            event = await sup.follow()
        except Exception as exc:
            self.log.exception("skyshare trigger failed")
            event = {**sup.state(), "status": "error", "message": f"{type(exc).__name__}: {exc}",
                     "outcome": None, "cluster": None, "namespace": None, "pod": None}
        yield TriggerEvent(event)

    async def on_kill(self) -> None:
        """A user marked the task failed/success or cleared it: delete its pod wherever it is."""
        sup = self._supervisor or Supervisor.from_state(self.state, log=self.log)
        deleted = await sup.delete_all(grace=0)
        self.log.info("on_kill deleted %s", ", ".join(deleted) or "no pod")
