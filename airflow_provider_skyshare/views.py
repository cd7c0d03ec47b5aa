"""What people sharing clusters ask, answered from a snapshot: who uses my GPUs, who lends
to whom, and what a request would preempt. Pure; the CLI and the UI plugin render it.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_skyshare.fleet import Fleet
from airflow_provider_skyshare.names import NOT_ENFORCED
from airflow_provider_skyshare.placement import Decision, Mode
from airflow_provider_skyshare.snapshot import Holder, Snapshot
from airflow_provider_skyshare.timeline import format_table


def fleet_rows(fleet: Fleet, snapshot: Snapshot) -> list[dict[str, Any]]:
    rows = []
    for cluster in fleet.clusters.values():
        cap = snapshot.get(cluster.name)
        first = next(iter(cluster.gpu_products.values()), "")
        for alias, label in cluster.gpu_products.items():
            row: dict[str, Any] = {
                "cluster": cluster.name, "owner": cluster.owner, "product": alias,
                "reachable": cap.reachable, "error": cap.error,
                "total": cap.total(label), "free": cap.free(label), "owner_use": 0,
                "lent": {}, "other_use": 0, "queued": {},
            }
            nodes = {n.node for n in cap.nodes_of(label)}
            for h in cap.holders:
                if h.node and h.node not in nodes:
                    continue
                if not h.node:
                    # Queued for this product; one naming none is listed once, on the first row.
                    if h.product != label and (h.product or label != first):
                        continue
                    key = f"{h.org or '?'}/{h.tier}"
                    row["queued"][key] = row["queued"].get(key, 0) + h.gpus
                elif h.tier == "borrower" or (h.org and h.org != cluster.owner):
                    org = h.org or "?"
                    row["lent"][org] = row["lent"].get(org, 0) + h.gpus
                elif h.tier == "owner" or h.org == cluster.owner:
                    row["owner_use"] += h.gpus
                else:
                    row["other_use"] += h.gpus
            rows.append(row)
    return rows


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{v} to {k}" if "/" not in k else f"{v} {k}" for k, v in sorted(d.items()))


FLEET_HEADERS = ["cluster", "owner", "gpu", "total", "free", "owner uses", "lent", "queued", "note"]


def fleet_cells(fleet: Fleet, snapshot: Snapshot) -> list[list[str]]:
    """fleet_rows as text cells under FLEET_HEADERS: what a person reads."""
    rows = []
    for r in fleet_rows(fleet, snapshot):
        if not r["reachable"]:
            rows.append([r["cluster"], r["owner"], r["product"], "-", "-", "-", "-", "-",
                         f"unreachable: {r['error'][:60]}"])
            continue
        rows.append([
            r["cluster"], r["owner"], r["product"], str(r["total"]), str(r["free"]),
            str(r["owner_use"]), _counts(r["lent"]) or "-",
            _counts(r["queued"]) or "-", f"{r['other_use']} other" if r["other_use"] else "",
        ])
    return rows


def fleet_table(fleet: Fleet, snapshot: Snapshot) -> str:
    return format_table(fleet_cells(fleet, snapshot), FLEET_HEADERS)


def node_rows(fleet: Fleet, snapshot: Snapshot) -> list[dict[str, Any]]:
    """Free GPUs per node (as `sky show-gpus` lists them): the nodes a placement may use, i.e.
    schedulable ones with a product the cluster offers. An unreachable cluster is one row
    saying why, so a missing cluster is not mistaken for a full one."""
    rows: list[dict[str, Any]] = []
    for cluster in fleet.clusters.values():
        cap = snapshot.get(cluster.name)
        if not cap.reachable:
            rows.append({"cluster": cluster.name, "node": None, "gpu": None, "product": None,
                         "total": None, "free": None, "borrowed": None, "error": cap.error})
            continue
        alias = {label: name for name, label in cluster.gpu_products.items()}
        rows.extend({"cluster": cluster.name, "node": n.node, "gpu": alias.get(n.product, n.product),
                     "product": n.product, "total": n.allocatable, "free": n.free,
                     "borrowed": n.borrowed, "error": ""} for n in cap.nodes)
    return rows


NODE_HEADERS = ["cluster", "node", "gpu", "product", "total", "free", "borrowed", "note"]


def node_cells(fleet: Fleet, snapshot: Snapshot) -> list[list[str]]:
    """node_rows as text cells under NODE_HEADERS."""
    return [[r["cluster"], "-", "-", "-", "-", "-", "-", f"unreachable: {r['error'][:60]}"]
            if r["error"] else
            [r["cluster"], r["node"], r["gpu"], r["product"], str(r["total"]), str(r["free"]),
             str(r["borrowed"]) if r["borrowed"] else "", ""]
            for r in node_rows(fleet, snapshot)]


def victims(decision: Decision, snapshot: Snapshot) -> list[Holder]:
    """Running borrowed work the chosen placement would have Kueue preempt (reclaim mode)."""
    chosen = decision.chosen
    if chosen is None or chosen.mode is not Mode.RECLAIM:
        return []
    cap = snapshot.get(chosen.cluster.name)
    label = chosen.cluster.gpu_products[decision.request.gpu_product]
    need = decision.request.gpu_count
    best: list[Holder] = []
    for node in cap.nodes_of(label):
        if node.free + node.borrowed < need:
            continue
        on_node = sorted((h for h in cap.holders if h.node == node.node and h.tier == "borrower"),
                         key=lambda h: -h.gpus)
        picked, free = [], node.free
        for h in on_node:
            if free >= need:
                break
            picked.append(h)
            free += h.gpus
        if free >= need and (not best or len(picked) < len(best)):
            best = picked
    return best


def explain_text(decision: Decision, snapshot: Snapshot) -> str:
    lines = [decision.summary(), "", decision.table()]
    hit = victims(decision, snapshot)
    if hit:
        lines += ["", "would preempt (Kueue reclaims borrowed GPUs):"]
        lines += [f"  {h.namespace}/{h.pod}  {h.gpus} GPU  org={h.org or '?'}  "
                  f"task={h.task or '?'}" for h in hit]
    return "\n".join(lines)


def tier_rows(fleet: Fleet, only: str | None = None,
              snapshot: Snapshot | None = None) -> list[dict[str, Any]]:
    """Per org and cluster: the tier it may use there, where, and whether the cluster holds
    it to that tier (its own credential and the admission policy; docs/security.md). With
    a snapshot, a cluster whose probe found the policy missing says so."""
    missing = {n for n, cap in (snapshot.clusters.items() if snapshot else ())
               if NOT_ENFORCED in cap.error}
    rows = []
    for org in fleet.orgs:
        if only is not None and org != only:
            continue
        for cluster in fleet.clusters.values():
            tier = cluster.tier_for(org)
            access = cluster.access_of(org)
            rows.append({
                "org": org, "cluster": cluster.name, "tier": tier.name if tier else None,
                "queue": tier.local_queue if tier else None,
                "priority_class": tier.priority_class if tier else None,
                "namespace": cluster.namespace_of(org) if tier else None,
                "credential": (access.connection_id or access.context) if tier else None,
                "enforced": cluster.enforced and cluster.name not in missing,
                "policy_missing": cluster.name in missing,
            })
    return rows


def _enforced(row: dict[str, Any]) -> str:
    if row["policy_missing"]:
        return "NO: policy missing"
    return "yes" if row["enforced"] else "NO: shared credential"


TIER_HEADERS = ["org", "cluster", "may use", "queue", "priority class", "namespace", "credential",
                "enforced by the cluster"]


def tier_cells(fleet: Fleet, only: str | None = None,
               snapshot: Snapshot | None = None) -> list[list[str]]:
    """tier_rows as text cells under TIER_HEADERS."""
    return [[r["org"], r["cluster"], r["tier"] or "- (not lent)", r["queue"] or "",
             r["priority_class"] or "", r["namespace"] or "", r["credential"] or "",
             _enforced(r)]
            for r in tier_rows(fleet, only, snapshot)]


def tier_table(fleet: Fleet, only: str | None = None, snapshot: Snapshot | None = None) -> str:
    return format_table(tier_cells(fleet, only, snapshot), TIER_HEADERS)
