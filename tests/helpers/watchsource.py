"""A scripted source for `watch.PodWatchHub` (its list and watch calls), for unit tests of
the shared watch's relist: the lists it answers in turn, and a first watch that answers
410 Gone, as an apiserver whose resourceVersion is too old does."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow_provider_skyshare import kube


class RelistSource:
    """Answers ``lists`` in turn (the last one from then on); the first watch ends in 410
    Gone, later ones wait."""

    def __init__(self, *lists: list[dict[str, Any]]) -> None:
        self.lists = list(lists)
        self.watches = 0

    async def list(self, cluster, namespace) -> dict[str, Any]:
        items = self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]
        return {"items": items, "metadata": {"resourceVersion": "7"}}

    async def _watch(self):
        self.watches += 1
        if self.watches == 1:
            raise kube.KubeError("rise", 410, "Expired", "too old resource version")
        await asyncio.sleep(3600)
        yield {}

    def watch(self, cluster, namespace, resource_version):
        return self._watch()
