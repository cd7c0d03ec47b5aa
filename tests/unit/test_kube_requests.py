"""The client's own count of its requests, by cluster, verb and resource: what the scale
benchmark reports beside the apiservers' totals (which mix in every other client)."""

from __future__ import annotations

import pytest

from airflow_provider_skyshare import kube


@pytest.mark.parametrize(("path", "resource"), [
    ("/api/v1/namespaces/ns/pods", "pods"),
    ("/api/v1/namespaces/ns/pods/p-1/log", "pods"),
    ("/api/v1/nodes", "nodes"),
    ("/api/v1/namespaces/ns", "namespaces"),
    ("/apis/coordination.k8s.io/v1/namespaces/ns/leases/claim-1", "leases"),
    ("/apis/kueue.x-k8s.io/v1beta1/clusterqueues", "clusterqueues"),
    ("/apis/scheduling.k8s.io/v1/priorityclasses/skyshare-owner", "priorityclasses"),
])
def test_each_request_is_counted_under_its_resource(monkeypatch, path, resource):
    monkeypatch.setattr(kube, "REQUESTS", type(kube.REQUESTS)())
    kube._count("rise", "GET", path)
    kube._count("rise", "GET", path)
    counted = dict(kube.REQUESTS)
    assert counted == {("rise", "GET", resource): 2}
