"""Every object the sandbox puts into a cluster, and the config files of its components.

Queue layout per cluster (docs/sandbox.md): ClusterQueues skyshare-owner (the cluster's
GPUs as nominal quota; reclaims lent quota, preempts lower priority) and skyshare-borrower
(no quota of its own, borrows everything from cohort `skyshare`). The owner's high-priority
work therefore preempts borrowed low-priority work, both through cohort reclaim and through
priority. Each org's namespace, credential, LocalQueue and the tier policy come from the
fleet (tenancy.py, applied by tenants.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
DURATION = "sandbox.skyshare.dev/duration"
EXIT_CODE = "sandbox.skyshare.dev/exit-code"
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"  # Kueue's own (the sandbox imports no provider)
GPU = "nvidia.com/gpu"
KUEUE_API = "kueue.x-k8s.io/v1beta2"
PRIORITIES = {"high-priority": 1000, "low-priority": 100}


def namespaces() -> list[dict[str, Any]]:
    out = []
    for ns in ("default", "kube-system", "kueue-system"):
        out.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        # No ServiceAccount controller runs: create each namespace's default ServiceAccount.
        out.append({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default", "namespace": ns}})
    return out


def priority_classes() -> list[dict[str, Any]]:
    out = []
    for name, value in PRIORITIES.items():
        out.append({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": name}, "value": value, "globalDefault": False,
                    "description": f"skyshare {name.split('-')[0]} tier"})
    return out


def kueue_objects(gpus: int, cpu: int, memory_gi: int, pods: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, value in PRIORITIES.items():
        out.append({"apiVersion": KUEUE_API, "kind": "WorkloadPriorityClass",
                    "metadata": {"name": name}, "value": value,
                    "description": f"skyshare {name.split('-')[0]} tier"})
    out.append({"apiVersion": KUEUE_API, "kind": "ResourceFlavor",
                "metadata": {"name": "default-flavor"}})

    def quota(share: bool) -> list[dict[str, Any]]:
        amounts = {"cpu": cpu, "memory": f"{memory_gi}Gi", GPU: gpus, "pods": pods}
        return [{"name": r, "nominalQuota": v if share else 0} for r, v in amounts.items()]

    for name, share in (("skyshare-owner", True), ("skyshare-borrower", False)):
        preemption = {"withinClusterQueue": "LowerPriority"}
        if share:
            preemption.update(reclaimWithinCohort="Any",
                              borrowWithinCohort={"policy": "LowerPriority"})
        out.append({
            "apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
            "spec": {
                "cohortName": "skyshare",
                "namespaceSelector": {},
                "queueingStrategy": "BestEffortFIFO",
                "preemption": preemption,
                "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU, "pods"],
                                    "flavors": [{"name": "default-flavor",
                                                 "resources": quota(share)}]}],
            },
        })
    return out


def node(cluster: str, index: int, gpus: int, product: str) -> dict[str, Any]:
    capacity = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    if gpus:
        capacity[GPU] = str(gpus)
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": f"{cluster}-gpu-{index}",
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": f"{cluster}-gpu-{index}",
                       "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", "nvidia.com/gpu.product": product,
                       "nvidia.com/gpu.count": str(gpus)},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def control_plane_node(cluster: str) -> dict[str, Any]:
    """A node that takes no work (no GPUs, the control-plane taint) and stays Ready, as a real
    cluster's control plane does. The node lifecycle controller stops all evictions when every
    node of a cluster is NotReady (it then blames itself, not the nodes): without this node,
    losing a one-GPU-node cluster's node would never evict its pods."""
    capacity = {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    name = f"{cluster}-control-plane"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "type": "kwok",
                       "node-role.kubernetes.io/control-plane": ""},
        },
        "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane",
                             "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


def crds(manifests: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((manifests / "crd").glob("*.yaml"))]


# Kueue serves only the webhooks of the frameworks it runs: keep its own types and pods
# (and batch/Jobs on a cluster that runs them).
_KEEP = ("pod", "kueue-x-k8s-io")
_KEEP_JOBS = ("-batch-v1-job",)


def webhooks(manifests: Path, port: int, ca_bundle: str,
             jobs: bool = False) -> list[dict[str, Any]]:
    """Kueue's webhook configurations pointed at https://127.0.0.1:PORT (no Services here)."""
    out = []
    keep = _KEEP + (_KEEP_JOBS if jobs else ())
    for doc in yaml.safe_load_all((manifests / "webhooks.yaml").read_text()):
        kept = []
        for hook in doc["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if not any(k in path for k in keep):
                continue
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": ca_bundle}
            hook["namespaceSelector"] = {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", "kueue-system"]}]}
            hook["timeoutSeconds"] = 10
            kept.append(hook)
        doc["webhooks"] = kept
        doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        out.append(doc)
    return out


def kueue_config(ports: dict[str, int], cert_dir: Path, jobs: bool = False) -> dict[str, Any]:
    """Kueue's config; with `jobs` it manages batch/Jobs too (what MultiKueue dispatches; its
    own settings keep Kueue's defaults: the MultiKueue gate is on by default in v0.19)."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": "kueue-system",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue_health']}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": ports["webhook"], "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", "kueue-system"]}]},
        "clientConnection": {"qps": 300, "burst": 500},
        "integrations": {"frameworks": ["pod", "batch/job"] if jobs else ["pod"]},
    }


# Topology-aware scheduling would add a second scheduling gate to every pod; it and every
# gate that depends on it are off. The visibility API would need an APIService: off too.
_TAS_GATES = (
    "TopologyAwareScheduling", "TASProfileMixed", "TASHandleOverlappingFlavors",
    "TASFailedNodeReplacement", "TASFailedNodeReplacementFailFast",
    "TASReplaceNodeOnPodTermination", "TASReplaceNodeDueToNotReadyOverFixedTime",
    "TASBalancedPlacement", "TASReplaceNodeOnNodeTaints", "TASMultiLayerTopology",
    "TASRespectNodeAffinityPreferred", "TASRecomputeAssignmentWithinSchedulingCycle",
    "ElasticJobsViaWorkloadSlicesWithTAS", "VisibilityOnDemand",
)
KUEUE_FEATURE_GATES = ",".join(f"{g}=false" for g in _TAS_GATES)


def kwok_config(kubelet_port: int, logs_file: Path) -> str:
    """KWOK v0.8 run standalone has no default stages: node init, pod lifecycle, completion.
    Its server is each node's kubelet (``kubelet_port``): the API server reads container logs
    there, and KWOK serves every container's from ``logs_file`` (``container_logs``)."""
    now = "{{ $now := Now }}"
    stages = [
        _stage("node-initialize", "Node", [
            {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status',
             "operator": "NotIn", "values": ["True"]}],
            next_={"statusTemplate": _NODE_STATUS + _daemon_endpoints(kubelet_port)}),
        _stage("pod-ready", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
            {"key": ".spec.nodeName", "operator": "Exists"},
            {"key": VALID_IMAGES, "operator": "In", "values": ["true"]}],
            next_={"statusTemplate": now + _POD_RUNNING}),
        # What the kubelet does with an image reference it cannot parse: the container waits
        # with reason InvalidImageName, forever (the provider must fail the task at once).
        _stage("pod-image-invalid", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending"]},
            {"key": ".spec.nodeName", "operator": "Exists"},
            {"key": VALID_IMAGES, "operator": "In", "values": ["false"]},
            {"key": ".status.containerStatuses", "operator": "DoesNotExist"}],
            next_={"statusTemplate": now + _POD_INVALID_IMAGE}),
        _stage("pod-complete", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            {"key": f'.metadata.annotations["{DURATION}"]', "operator": "Exists"},
            {"key": f'.metadata.annotations["{EXIT_CODE}"]', "operator": "DoesNotExist"}],
            delay={"durationMilliseconds": 0,
                   "durationFrom": {"expressionFrom": f'.metadata.annotations["{DURATION}"]'}},
            next_={"statusTemplate": now + _pod_done("Succeeded", "0", "Completed")}),
        _stage("pod-fail", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
            {"key": ".status.phase", "operator": "In", "values": ["Running"]},
            {"key": f'.metadata.annotations["{DURATION}"]', "operator": "Exists"},
            {"key": f'.metadata.annotations["{EXIT_CODE}"]', "operator": "Exists"}],
            delay={"durationMilliseconds": 0,
                   "durationFrom": {"expressionFrom": f'.metadata.annotations["{DURATION}"]'}},
            next_={"statusTemplate": now + _pod_done(
                "Failed", f"{{{{ index $root.metadata.annotations \"{EXIT_CODE}\" }}}}", "Error")}),
        # What a kubelet does with a deleted pod once its grace period is over: stop its
        # containers, and the pod ends Failed. Only for Kueue pod-group members (gangs):
        # Kueue keeps its finalizer on them until the whole group has ended, which without
        # this would never come on KWOK. (Kueue drops a single pod's finalizer at once.)
        _stage("pod-group-member-stopped", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".metadata.finalizers", "operator": "Exists"},
            {"key": ".status.phase", "operator": "In", "values": ["Pending", "Running"]},
            {"key": f'.metadata.labels["{POD_GROUP_LABEL}"]', "operator": "Exists"}],
            delay={"durationMilliseconds": 0,
                   "durationFrom": {"expressionFrom": ".metadata.deletionTimestamp"}},
            next_={"statusTemplate": now + _pod_done("Failed", "143", "Error")}),
        _stage("pod-delete", "Pod", [
            {"key": ".metadata.deletionTimestamp", "operator": "Exists"},
            {"key": ".metadata.finalizers", "operator": "DoesNotExist"}],
            next_={"delete": True}),
    ]
    return yaml.safe_dump_all([*stages, container_logs(logs_file)], sort_keys=False)


def container_logs(logs_file: Path) -> dict[str, Any]:
    """Every container of every pod on the cluster logs ``logs_file`` (CRI format). KWOK
    v0.8 picks a file per pod only from a ``Logs`` object named after the pod, known before
    the log is read; one file per cluster needs none. Following is the request's
    (``follow=true``, via fsnotify): the Log's own ``follow`` field is not read by v0.8."""
    return {"kind": "ClusterLogs", "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "metadata": {"name": "container-logs"},
            "spec": {"logs": [{"logsFile": str(logs_file), "follow": True}]}}


def _daemon_endpoints(port: int) -> str:
    """Where the API server reaches the node's kubelet (here KWOK) for logs."""
    return f"daemonEndpoints:\n  kubeletEndpoint:\n    Port: {port}\n"


def daemon_endpoints(port: int) -> dict[str, Any]:
    return {"kubeletEndpoint": {"Port": port}}


def _stage(name: str, kind: str, exprs: list[dict[str, Any]], next_: dict[str, Any],
           delay: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceRef": {"apiGroup": "v1", "kind": kind},
                            "selector": {"matchExpressions": exprs}, "next": next_}
    if delay:
        spec["delay"] = delay
    return {"kind": "Stage", "apiVersion": "kwok.x-k8s.io/v1alpha1", "metadata": {"name": name},
            "spec": spec}


_NODE_STATUS = """{{ $now := Now }}
conditions:
{{ range NodeConditions }}
- lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
  message: {{ .message | Quote }}
  reason: {{ .reason | Quote }}
  status: {{ .status | Quote }}
  type: {{ .type | Quote }}
{{ end }}
addresses:
- address: 127.0.0.1
  type: InternalIP
- address: {{ .metadata.name | Quote }}
  type: Hostname
allocatable:
{{ YAML .status.allocatable 1 }}
capacity:
{{ YAML .status.capacity 1 }}
nodeInfo:
  architecture: amd64
  kubeletVersion: fake
  operatingSystem: linux
phase: Running
"""

# The kubelet's parse of an image reference, roughly: the repository part (before the first
# ':') is lower case without spaces. "BUSYBOX" or "bad image" fail it; tags may be any case.
VALID_IMAGES = ('.spec.containers | map(.image | split(":") | .[0] '
                '| test("^[a-z0-9][a-z0-9._/-]*$")) | all')

_POD_INVALID_IMAGE = """
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
- lastTransitionTime: {{ $now | Quote }}
  status: "False"
  type: Ready
  reason: ContainersNotReady
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  started: false
  state:
    waiting:
      reason: InvalidImageName
      message: {{ printf "couldn't parse image name %q: invalid reference format" .image | Quote }}
{{ end }}
hostIP: 127.0.0.1
phase: Pending
startTime: {{ $now | Quote }}
"""

_POD_RUNNING = """
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: ContainersReady
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: PodScheduled
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: true
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
hostIP: 127.0.0.1
podIP: 10.244.0.1
phase: Running
startTime: {{ $now | Quote }}
"""


def _pod_done(phase: str, code: str, reason: str) -> str:
    return f"""
{{{{ $root := . }}}}
conditions:
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: Ready
  reason: PodCompleted
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "False"
  type: ContainersReady
  reason: PodCompleted
- lastTransitionTime: {{{{ $now | Quote }}}}
  status: "True"
  type: PodScheduled
containerStatuses:
{{{{ range .spec.containers }}}}
- image: {{{{ .image | Quote }}}}
  name: {{{{ .name | Quote }}}}
  ready: false
  restartCount: 0
  started: false
  state:
    terminated:
      exitCode: {code}
      finishedAt: {{{{ $now | Quote }}}}
      reason: {reason}
      startedAt: {{{{ $now | Quote }}}}
{{{{ end }}}}
phase: {phase}
"""
