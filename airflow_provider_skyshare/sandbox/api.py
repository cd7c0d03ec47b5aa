"""The sandbox for Python callers (tests, demo, benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_skyshare.sandbox import cluster, paths


@dataclass
class Sandbox:
    kubeconfig: str
    clusters: list[str]

    @classmethod
    def ensure_up(cls, specs: list[cluster.ClusterSpec] | None = None,
                  fleets: list[str] | None = None) -> Sandbox:
        """Reuse a running sandbox (starting whatever died), or bring it up."""
        state = cluster.up(specs, fleets)
        return cls(str(paths.state_dir() / "kubeconfig"), list(state.clusters))

    def ensure_cluster(self, name: str, nodes: int = 1, gpus: int = 2,
                       product: str = "Tesla-T4", fleet: str | None = None) -> None:
        state = cluster.up([cluster.ClusterSpec(name, nodes, gpus, product)],
                           [fleet] if fleet else None)
        self.clusters = list(state.clusters)

    def admin_context(self, name: str) -> str:
        return name

    def operator_context(self, name: str) -> str:
        return f"{name}-operator"

    def org_context(self, org: str, name: str) -> str:
        return f"{org}@{name}"

    def core_v1(self, context: str):
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(config_file=self.kubeconfig,
                                                              context=context))

    def stop_component(self, name: str, component: str) -> None:
        cluster.stop_component(cluster.State.load(), name, component)

    def start_component(self, name: str, component: str) -> None:
        cluster.start_component(cluster.State.load(), name, component)

    def node_down(self, name: str, node: str | None = None) -> str:
        """Stop a node's heartbeat (default `<name>-gpu-0`): NotReady after the grace period,
        then tainted, then its pods evicted. Returns the node's name."""
        return cluster.node_down(cluster.State.load(), name, node)

    def node_up(self, name: str, node: str | None = None, timeout: float = 60) -> str:
        """The node heartbeats again; returns once it is Ready and untainted."""
        return cluster.node_up(cluster.State.load(), name, node, timeout)

    def write_log(self, name: str, *texts: str) -> None:
        """Lines every container on cluster ``name`` "writes" now: its pods' logs (read with
        follow=true) show them at once."""
        cluster.write_log(cluster.State.load(), name, *texts)
