"""`skyshare-sandbox status`: per cluster, components alive, nodes, GPUs, Kueue workloads."""

from __future__ import annotations

from airflow_provider_skyshare.sandbox import cluster, manifests


def rows(state: cluster.State) -> list[list[str]]:
    from kubernetes import client

    out = []
    for name in state.clusters:
        comps = " ".join(f"{c}:{'up' if cluster.component_alive(state, name, c) else 'DOWN'}"
                         for c in cluster.COMPONENTS)
        if not cluster.component_alive(state, name, "apiserver"):
            out.append([name, comps, "-", "-", "-", "-", "-"])
            continue
        api = cluster.api_client(state, name)
        core = client.CoreV1Api(api)
        nodes = core.list_node().items
        ready = sum(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
                    for n in nodes)
        alloc = sum(int((n.status.allocatable or {}).get(manifests.GPU, 0)) for n in nodes)
        products = sorted({(n.metadata.labels or {}).get("nvidia.com/gpu.product", "?")
                           for n in nodes if int((n.status.allocatable or {}).get(manifests.GPU, 0))})
        used = 0
        for p in core.list_pod_for_all_namespaces(
                field_selector="status.phase!=Succeeded,status.phase!=Failed").items:
            if not p.spec.node_name:
                continue
            for c in p.spec.containers:
                used += int(((c.resources and c.resources.requests) or {}).get(manifests.GPU, 0))
        wls = client.CustomObjectsApi(api).list_cluster_custom_object(
            "kueue.x-k8s.io", "v1beta2", "workloads")["items"]
        admitted = sum(1 for w in wls if _cond(w, "Admitted") and not _cond(w, "Finished"))
        pending = sum(1 for w in wls if not _cond(w, "Admitted") and not _cond(w, "Finished"))
        out.append([name, comps, f"{ready}/{len(nodes)}", f"{alloc} {','.join(products)}",
                    str(used), str(admitted), str(pending)])
    return out


def _cond(obj: dict, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


HEADERS = ["cluster", "components", "nodes ready", "GPUs allocatable", "GPUs in use",
           "admitted", "pending"]


def table(state: cluster.State) -> str:
    data = rows(state)
    widths = [max(len(h), *(len(r[i]) for r in data)) if data else len(h)
              for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in data]
    return "\n".join(line.rstrip() for line in lines)
