"""Start, check and stop the sandbox's processes; bootstrap each cluster's objects.

One etcd serves every cluster (distinct --etcd-prefix each). Per cluster: kube-apiserver,
kube-scheduler, kube-controller-manager (garbage collector, node lifecycle, taint eviction),
KWOK (fake nodes) and Kueue with its real webhooks. Processes are
detached (own session) with logs and pids in the state dir, so they outlive the CLI.
Waits are on health endpoints with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import copy
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airflow_provider_skyshare.fleet import Fleet, FleetError
from airflow_provider_skyshare.names import NS_TIER_LABEL, TIER_POLICY
from airflow_provider_skyshare.sandbox import certs, manifests, paths, tenants

COMPONENTS = ("apiserver", "scheduler", "controllers", "kwok", "kueue")
LEGACY_COMPONENTS = ("gc",)  # older sandboxes' names for what runs now: stopped by `up`
FIELD_MANAGER = "skyshare-sandbox"
CONTROLLERS = ("garbage-collector-controller", "node-lifecycle-controller",
               "taint-eviction-controller", "endpointslice-controller")
# Node loss, sandbox timings (a real cluster: lease 40 s, grace 50 s, tolerations 300 s).
NODE_LEASE_SECONDS = 5  # KWOK renews each node's Lease every 1.25 s (seen: 2-4 s, 2 cores)
NODE_MONITOR_GRACE_SECONDS = 12  # no renewal for this long: the node turns NotReady (Unknown)
NODE_MONITOR_PERIOD_SECONDS = 1
EVICTION_TOLERATION_SECONDS = 10  # then its pods are evicted (DefaultTolerationSeconds)


class SandboxError(RuntimeError):
    pass


@dataclass
class ClusterSpec:
    name: str
    nodes: int = 1
    gpus: int = 2
    product: str = "Tesla-T4"
    jobs: int = 0  # 1: Kueue manages batch/Jobs too and the Job controller runs (MultiKueue)

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """'rise' or 'campus:nodes=1,gpus=4,product=Tesla-T4,jobs=1'."""
        name, _, opts = text.partition(":")
        spec = cls(name=name.strip())
        for part in filter(None, opts.split(",")):
            key, _, value = part.partition("=")
            if key not in ("nodes", "gpus", "product", "jobs"):
                raise SandboxError(f"--cluster {text}: unknown option {key!r} "
                                   "(use nodes=N,gpus=G,product=P,jobs=0|1)")
            setattr(spec, key, value if key == "product" else int(value))
        if not spec.name.isalnum() or not spec.name.islower():
            raise SandboxError(f"--cluster {text}: name must be lower-case letters and digits")
        return spec


DEFAULT_CLUSTERS = (ClusterSpec("rise"), ClusterSpec("bair"))


_SAVE_LOCK = threading.Lock()


@dataclass
class State:
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> spec + index
    pids: dict[str, int] = field(default_factory=dict)  # "etcd" | "<cluster>/<component>"
    fleets: list[str] = field(default_factory=list)  # fleet files whose orgs it hosts

    def forget_missing_fleets(self) -> list[str]:
        """Drop the fleet files that are gone: a clone that ran `up --fleet` and was deleted
        since (the sandbox outlives it) must not stop the next `up`."""
        gone = [f for f in self.fleets if not Path(f).exists()]
        self.fleets = [f for f in self.fleets if f not in gone]
        return gone

    def tenant_fleets(self) -> list[Fleet]:
        return tenants.fleets(self.fleets, self.clusters)

    @classmethod
    def load(cls) -> State:
        path = paths.state_dir() / "state.json"
        if not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        """Atomic, and safe when clusters come up in parallel threads."""
        d = paths.state_dir()
        d.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK:
            data = {"clusters": copy.deepcopy(dict(self.clusters)), "pids": dict(self.pids),
                    "fleets": list(self.fleets)}
            tmp = d / f"state.json.{os.getpid()}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(data, indent=2))
            tmp.replace(d / "state.json")

    def index(self, name: str) -> int:
        return self.clusters[name]["index"]


# -- processes ------------------------------------------------------------------------
def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _spawn(key: str, args: list[str], env: dict[str, str] | None = None) -> int:
    logs = paths.state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{key.replace('/', '-')}.log", "ab")  # noqa: SIM115 - child keeps it
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})
    return proc.pid


def _kill(pid: int | None, timeout: float = 10) -> None:
    if not alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5  # killed, but still closing its files meanwhile
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - keep the last reason for the error
            last = exc
        time.sleep(0.1)
    raise SandboxError(f"{what} not healthy after {timeout:g}s ({last}); "
                       f"see {paths.state_dir() / 'logs'}")


def _https_ok(url: str, admin: bool = True) -> bool:
    d = paths.state_dir() / "pki"
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    if admin:
        ctx.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# -- etcd -----------------------------------------------------------------------------
def ensure_etcd(state: State) -> None:
    client, peer = paths.etcd_ports()
    if alive(state.pids.get("etcd")) and _http_ok(f"http://127.0.0.1:{client}/health"):
        return
    data = paths.state_dir() / "etcd"
    state.pids["etcd"] = _spawn("etcd", [
        str(paths.bin_dir() / "etcd"), "--name", "sandbox", "--data-dir", str(data),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"sandbox=http://127.0.0.1:{peer}",
        "--quota-backend-bytes", str(2 * 1024**3), "--log-level", "warn",
        "--unsafe-no-fsync",  # a throwaway local store: speed over durability
    ])
    state.save()
    _wait(lambda: _http_ok(f"http://127.0.0.1:{client}/health"), 30, "etcd")


# -- per-cluster components -------------------------------------------------------------
def _cdir(name: str) -> Path:
    return paths.state_dir() / "clusters" / name


def _admin_kubeconfig(name: str, port: int) -> Path:
    """A single-context admin kubeconfig for the cluster's own components."""
    pki = paths.state_dir() / "pki"
    path = _cdir(name) / "admin.kubeconfig"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written anew by each component's start while other threads read it: replace it whole,
    # never truncate it in place (a reader saw an empty file).
    tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
    tmp.write_text(yaml.safe_dump(_kubeconfig_doc(
        [(name, port)], [("admin", pki / "admin.crt", pki / "admin.key")],
        [(name, name, "admin")], name)))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def ca_data() -> str:
    """The sandbox's CA (base64 PEM): it signed every apiserver's serving certificate."""
    return _b64(paths.state_dir() / "pki" / "ca.crt")


def _kubeconfig_doc(clusters, users, contexts, current: str,
                    tokens: list[tuple[tenants.Credential, str]] = ()) -> dict[str, Any]:
    """Cert users (admin) and token users (one per credential, named as its context)."""
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": {"server": f"https://127.0.0.1:{p}",
                                             "certificate-authority-data": ca_data()}}
                     for n, p in clusters],
        "users": [{"name": u, "user": {"client-certificate-data": _b64(c),
                                       "client-key-data": _b64(k)}} for u, c, k in users]
        + [{"name": cred.context, "user": {"token": token}} for cred, token in tokens],
        "contexts": [{"name": n, "context": {"cluster": c, "user": u, "namespace": "default"}}
                     for n, c, u in contexts]
        + [{"name": cred.context, "context": {"cluster": cred.cluster, "user": cred.context,
                                              "namespace": cred.namespace}}
           for cred, _ in tokens],
    }


def write_kubeconfig(state: State) -> Path:
    """Contexts NAME (admin), NAME-operator (the cluster's own) and ORG@NAME (each org's)."""
    pki = paths.state_dir() / "pki"
    clusters = [(n, paths.cluster_ports(c["index"])["apiserver"])
                for n, c in sorted(state.clusters.items(), key=lambda kv: kv[1]["index"])]
    fleets = state.tenant_fleets()
    tokens = []
    for n, _ in clusters:
        api = api_client(state, n)
        for cred in tenants.credentials(fleets, n):
            _retrying(n, f"token of {cred.context}",
                      lambda c=cred, a=api: tokens.append((c, tenants.request_token(a, c))))
    doc = _kubeconfig_doc(clusters, [
        ("skyshare-sandbox-admin", pki / "admin.crt", pki / "admin.key"),
    ], [(n, n, "skyshare-sandbox-admin") for n, _ in clusters],
        clusters[0][0] if clusters else "", tokens)
    path = paths.state_dir() / "kubeconfig"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _start_apiserver(state: State, name: str) -> None:
    ports = paths.cluster_ports(state.index(name))
    pki = paths.state_dir() / "pki"
    client, _ = paths.etcd_ports()
    state.pids[f"{name}/apiserver"] = _spawn(f"{name}/apiserver", [
        str(paths.bin_dir() / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{client}", f"--etcd-prefix=/skyshare/{name}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--secure-port={ports['apiserver']}",
        f"--tls-cert-file={pki / 'serving.crt'}", f"--tls-private-key-file={pki / 'serving.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        # TaintNodesByCondition stays on (new nodes start with the not-ready taint; the node
        # lifecycle controller lifts it once KWOK reports them Ready). A pod on a node that
        # stops heartbeating is evicted after this long instead of the default 300 s.
        f"--default-not-ready-toleration-seconds={EVICTION_TOLERATION_SECONDS}",
        f"--default-unreachable-toleration-seconds={EVICTION_TOLERATION_SECONDS}",
        "--endpoint-reconciler-type=none",
        "--enable-priority-and-fairness=false",
        "--profiling=false", "--allow-privileged=true",
        f"--cert-dir={_cdir(name) / 'apiserver-certs'}",
        "--event-ttl=10m",
        # Container logs: the API server reads them from each node's kubelet (KWOK's server,
        # its port in the node's daemonEndpoints) at the node's InternalIP (its Hostname is
        # the node's name, which resolves nowhere), verifying its serving certificate.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
    ])


def apiserver_url(state: State, name: str) -> str:
    return f"https://127.0.0.1:{paths.cluster_ports(state.index(name))['apiserver']}"


def _start_scheduler(state: State, name: str) -> None:
    ports = paths.cluster_ports(state.index(name))
    kc = _admin_kubeconfig(name, ports["apiserver"])
    state.pids[f"{name}/scheduler"] = _spawn(f"{name}/scheduler", [
        str(paths.bin_dir() / "kube-scheduler"), f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1", f"--secure-port={ports['scheduler']}",
        "--leader-elect=false",
    ])


def _start_controllers(state: State, name: str) -> None:
    """kube-controller-manager with four controllers. The garbage collector: Kueue's
    Workloads are owned by their pods, and without it a finished Workload outlives its pod and
    holds the next pod of the same name (and a gang's Service is owned by its leader). The
    EndpointSlice controller: a gang's headless Service lists its members, as on a real
    cluster (whose DNS serves <pod>.<service> from it). Node lifecycle and taint eviction: a node whose
    heartbeat (its Lease) stops turns NotReady, is tainted, and its pods are evicted, as on a
    real cluster. Timings are short so that a lost node shows within seconds."""
    ports = paths.cluster_ports(state.index(name))
    kc = _admin_kubeconfig(name, ports["apiserver"])
    state.pids[f"{name}/controllers"] = _spawn(f"{name}/controllers", [
        str(paths.bin_dir() / "kube-controller-manager"), f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        f"--controllers={','.join(CONTROLLERS + _job_controller(state, name))}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s",
        f"--node-monitor-period={NODE_MONITOR_PERIOD_SECONDS}s",
        "--bind-address=127.0.0.1", f"--secure-port={ports['controllers']}",
        f"--cert-dir={_cdir(name) / 'controllers-certs'}",
    ])


def _jobs(state: State, name: str) -> bool:
    """Whether this cluster runs batch/Jobs (a MultiKueue manager or worker)."""
    return bool(state.clusters[name].get("jobs", 0))


def _job_controller(state: State, name: str) -> tuple[str, ...]:
    return ("job-controller",) if _jobs(state, name) else ()


def _start_kwok(state: State, name: str) -> None:
    """KWOK, after freeing the node Leases its predecessor held (a new KWOK has a new identity
    and would wait for them to expire, the nodes without heartbeat meanwhile)."""
    _release_leases(state, name)
    ports = paths.cluster_ports(state.index(name))
    kc = _admin_kubeconfig(name, ports["apiserver"])
    cfg = _cdir(name) / "kwok.yaml"
    cfg.write_text(manifests.kwok_config(ports["kwok"], _ensure_logs_file(name)))
    pki = paths.state_dir() / "pki"
    state.pids[f"{name}/kwok"] = _spawn(f"{name}/kwok", [
        str(paths.bin_dir() / "kwok"), f"--kubeconfig={kc}", f"--config={cfg}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={manifests.KWOK_NODE_ANNOTATION}=fake",
        f"--server-address=127.0.0.1:{ports['kwok']}",
        # the kubelet's serving certificate, as the API server verifies it (logs)
        f"--tls-cert-file={pki / 'serving.crt'}", f"--tls-private-key-file={pki / 'serving.key'}",
        "--node-ip=127.0.0.1", "--cidr=10.244.0.0/16",
        # The node heartbeat: renewed every quarter of this, well inside the grace period
        # (also across a KWOK restart, which waits for its predecessor's leases to expire).
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
    ])


# -- container logs ---------------------------------------------------------------------
def logs_file(name: str) -> Path:
    """The container log of every pod on the cluster (KWOK serves it: ``container_logs``)."""
    return _cdir(name) / "logs" / "container.log"


def _ensure_logs_file(name: str) -> Path:
    path = logs_file(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cri_line(f"sandbox {name}: every container on this cluster logs this "
                                 "file (skyshare-sandbox log appends to it)"))
    return path


def cri_line(text: str, at_ns: int | None = None) -> str:
    """One line as a container runtime writes it: RFC 3339 (nanoseconds), stream, tag."""
    seconds, frac = divmod(time.time_ns() if at_ns is None else at_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{frac:09d}Z stdout F {text}\n"


def write_log(state: State, name: str, *texts: str) -> Path:
    """Append lines to the cluster's container log, now: what a running container writes."""
    if name not in state.clusters:
        raise SandboxError(f"no cluster {name!r} in the sandbox ({', '.join(state.clusters)})")
    path = _ensure_logs_file(name)
    with path.open("a") as fh:
        fh.write("".join(cri_line(t) for t in texts))
    return path


def _ensure_kueue_certs() -> None:
    pki = paths.state_dir() / "pki"
    webhook = paths.state_dir() / "kueue-webhook-certs"
    webhook.mkdir(parents=True, exist_ok=True)
    for src, dst in (("serving.crt", "tls.crt"), ("serving.key", "tls.key")):
        if not (webhook / dst).exists():
            shutil.copy(pki / src, webhook / dst)
    metrics = paths.KUEUE_METRICS_CERTS
    try:
        metrics.mkdir(parents=True, exist_ok=True)
        for src, dst in (("serving.crt", "tls.crt"), ("serving.key", "tls.key")):
            if not (metrics / dst).exists():
                shutil.copy(pki / src, metrics / dst)
    except PermissionError:
        raise SandboxError(
            f"Kueue (internal cert management off) reads a metrics certificate from {metrics}; "
            "it cannot be created as this user. Fix: run once as root: "
            f"sudo mkdir -p {metrics} && sudo chown $USER {metrics}") from None


def _start_kueue(state: State, name: str) -> None:
    ports = paths.cluster_ports(state.index(name))
    kc = _admin_kubeconfig(name, ports["apiserver"])
    cfg = _cdir(name) / "kueue.yaml"
    cfg.write_text(yaml.safe_dump(manifests.kueue_config(
        ports, paths.state_dir() / "kueue-webhook-certs", jobs=_jobs(state, name))))
    state.pids[f"{name}/kueue"] = _spawn(f"{name}/kueue", [
        str(paths.bin_dir() / "kueue"), f"--config={cfg}", f"--kubeconfig={kc}",
        f"--feature-gates={manifests.KUEUE_FEATURE_GATES}", "--zap-log-level=2",
    ], env={"KUBECONFIG": str(kc), "NAMESPACE": "kueue-system", "POD_NAMESPACE": "kueue-system"})


def _health(state: State, name: str, component: str) -> bool:
    ports = paths.cluster_ports(state.index(name))
    if component == "apiserver":
        return _https_ok(f"{apiserver_url(state, name)}/readyz")
    if component == "scheduler":
        return _https_ok(f"https://127.0.0.1:{ports['scheduler']}/healthz", admin=False)
    if component == "controllers":
        return _https_ok(f"https://127.0.0.1:{ports['controllers']}/healthz", admin=False)
    if component == "kwok":
        return _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz")
    if component == "kueue":
        return _http_ok(f"http://127.0.0.1:{ports['kueue_health']}/readyz")
    raise SandboxError(f"unknown component {component!r} (use {', '.join(COMPONENTS)})")


_STARTERS = {"apiserver": _start_apiserver, "scheduler": _start_scheduler,
             "controllers": _start_controllers, "kwok": _start_kwok, "kueue": _start_kueue}


def component_alive(state: State, name: str, component: str) -> bool:
    return alive(state.pids.get(f"{name}/{component}"))


_BINARY = {"apiserver": "kube-apiserver", "scheduler": "kube-scheduler",
           "controllers": "kube-controller-manager", "kwok": "kwok", "kueue": "kueue"}


def rebuilt(pid: int | None, binary: Path) -> bool:
    """The process runs `binary` as it was before `build` replaced it (it renames the new one
    over the old): `up` restarts it, or a sandbox left running would keep the old behaviour.
    (The shared etcd is not checked: its binary is never patched.)"""
    try:
        return os.readlink(f"/proc/{pid}/exe") == f"{os.path.realpath(binary)} (deleted)"
    except OSError:  # gone, or not Linux
        return False


def start_component(state: State, name: str, component: str, timeout: float = 60) -> None:
    if name not in state.clusters:
        raise SandboxError(f"no cluster {name!r} in the sandbox ({', '.join(state.clusters)})")
    if component not in _STARTERS:
        raise SandboxError(f"unknown component {component!r} (use {', '.join(COMPONENTS)})")
    pid = state.pids.get(f"{name}/{component}")
    if not (component_alive(state, name, component)
            and not rebuilt(pid, paths.bin_dir() / _BINARY[component])
            and _health(state, name, component)):
        _kill(pid)
        _STARTERS[component](state, name)
        state.save()
    _wait(lambda: _health(state, name, component), timeout, f"{name} {component}")


def stop_component(state: State, name: str, component: str) -> None:
    if component not in _STARTERS:
        raise SandboxError(f"unknown component {component!r} (use {', '.join(COMPONENTS)})")
    _kill(state.pids.pop(f"{name}/{component}", None))
    state.save()


# -- objects ----------------------------------------------------------------------------
def api_client(state: State, name: str):
    from kubernetes import config

    kc = _admin_kubeconfig(name, paths.cluster_ports(state.index(name))["apiserver"])
    return config.new_client_from_config(config_file=str(kc))


_PLURALS = {
    "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Node": "nodes", "Pod": "pods",
    "PriorityClass": "priorityclasses", "Role": "roles", "RoleBinding": "rolebindings",
    "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
    "CustomResourceDefinition": "customresourcedefinitions",
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
    "ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues",
    "LocalQueue": "localqueues", "WorkloadPriorityClass": "workloadpriorityclasses",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    "Lease": "leases", "Secret": "secrets", "AdmissionCheck": "admissionchecks",
    "MultiKueueConfig": "multikueueconfigs", "MultiKueueCluster": "multikueueclusters",
}


_OBJECT = {200: "object", 201: "object"}


def object_path(obj: dict[str, Any]) -> str:
    api_version, kind = obj["apiVersion"], obj["kind"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = obj["metadata"].get("namespace")
    plural = _PLURALS[kind]
    prefix = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
    return f"{prefix}/{obj['metadata']['name']}"


def apply(api, obj: dict[str, Any], dry_run: bool = False) -> None:
    """Server-side apply (the Workload CRD is too large for client-side apply)."""
    query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
    if dry_run:
        query.append(("dryRun", "All"))
    api.call_api(object_path(obj), "PATCH", query_params=query, body=obj,
                 header_params={"Content-Type": "application/apply-patch+yaml",
                                "Accept": "application/json"},
                 response_types_map=_OBJECT, _return_http_data_only=True,
                 auth_settings=["BearerToken"])


def apply_node_status(api, obj: dict[str, Any], kubelet_port: int) -> None:
    """Nodes are created by hand here: give them their capacity and their kubelet's port
    (KWOK's server: container logs are read there) (status subresource)."""
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": obj["metadata"]["name"]},
            "status": {"capacity": obj["status"]["capacity"],
                       "allocatable": obj["status"]["allocatable"],
                       "daemonEndpoints": manifests.daemon_endpoints(kubelet_port)}}
    api.call_api(object_path(obj) + "/status", "PATCH",
                 query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=body,
                 header_params={"Content-Type": "application/apply-patch+yaml"},
                 response_types_map=_OBJECT, _return_http_data_only=True,
                 auth_settings=["BearerToken"])


def _wait_crds(api) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)

    def established() -> bool:
        crds = [c for c in ext.list_custom_resource_definition().items
                if c.spec.group == "kueue.x-k8s.io"]
        return len(crds) >= 5 and all(
            any(cond.type == "Established" and cond.status == "True"
                for cond in (c.status.conditions or [])) for c in crds)

    _wait(established, 60, "Kueue CRDs established")


def _retrying(name: str, what: str, fn, timeout: float = 60) -> None:
    """A fresh apiserver (RBAC bootstrap, new namespaces, CRDs) or a warming webhook refuses
    requests for a moment after /readyz: retry, then fail naming the object and the logs."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            fn()
            return
        except Exception as exc:  # noqa: BLE001 - transient until the deadline
            if time.monotonic() > deadline:
                raise SandboxError(f"{name}: applying {what} failed for {timeout:g}s: "
                                   f"{str(exc)[:600]}; see {paths.state_dir() / 'logs'}") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _apply_all(api, name: str, objs: list[dict[str, Any]]) -> None:
    for obj in objs:
        what = f"{obj['kind']} {obj['metadata'].get('name')}"
        _retrying(name, what, lambda o=obj: apply(api, o))


def bootstrap_base(state: State, name: str) -> None:
    """Objects that need only the apiserver: namespaces, RBAC, priorities, CRDs, nodes."""
    api = api_client(state, name)
    spec = state.clusters[name]
    _apply_all(api, name, manifests.namespaces() + manifests.priority_classes()
               + manifests.crds(paths.kueue_manifests()))
    nodes = [manifests.node(name, i, spec["gpus"], spec["product"]) for i in range(spec["nodes"])]
    ports = paths.cluster_ports(state.index(name))
    for node in [manifests.control_plane_node(name), *nodes]:
        _apply_all(api, name, [{k: v for k, v in node.items() if k != "status"}])
        _retrying(name, f"status of node {node['metadata']['name']}",
                  lambda n=node: apply_node_status(api, n, ports["kwok"]))
    pki = paths.state_dir() / "pki"
    port = ports["webhook"]
    _apply_all(api, name, manifests.webhooks(paths.kueue_manifests(), port, _b64(pki / "ca.crt"),
                                             jobs=_jobs(state, name)))
    _wait_crds(api)


def bootstrap_queues(state: State, name: str) -> None:
    """Kueue objects (validated by Kueue's own webhooks, so Kueue must be up)."""
    api = api_client(state, name)
    spec = state.clusters[name]
    gpus = spec["gpus"] * spec["nodes"]
    _apply_all(api, name, manifests.kueue_objects(gpus, 8 * spec["nodes"], 32 * spec["nodes"],
                                                  110 * spec["nodes"]))


# -- node loss --------------------------------------------------------------------------
# KWOK manages a node only while it holds the node's Lease (how several KWOKs share nodes);
# the Lease is also the node's heartbeat for the node lifecycle controller. Taking the Lease
# (frozen renewTime, a duration nobody outlives) stops both, as a dead kubelet would: no more
# renewals, no node status, no pod updates on that node. Removing the node's KWOK annotation
# would not do it: KWOK filters its watch client-side, never sees the node leave its selection
# and keeps renewing the Lease. Deleting the Lease gives the node back to KWOK.
NODE_DOWN_HOLDER = "skyshare-sandbox-node-down"
_NODE_LEASE_NS = "kube-node-lease"
_FOREVER = 10 * 365 * 24 * 3600  # the lease duration of a node that is down


def _core(state: State, name: str):
    from kubernetes import client

    return client.CoreV1Api(api_client(state, name))


def _node_name(state: State, name: str, node: str | None) -> str:
    if name not in state.clusters:
        raise SandboxError(f"no cluster {name!r} in the sandbox ({', '.join(state.clusters)})")
    node = node or f"{name}-gpu-0"
    from kubernetes.client.exceptions import ApiException

    try:
        _core(state, name).read_node(node)
    except ApiException as exc:
        if exc.status == 404:
            raise SandboxError(f"{name}: no node {node!r}") from None
        raise
    return node


def node_down(state: State, name: str, node: str | None = None) -> str:
    """Stop a node's heartbeat. After the grace period the lifecycle controller marks it
    NotReady and taints it; its pods are evicted once their tolerations run out."""
    node = _node_name(state, name, node)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    apply(api_client(state, name), {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node, "namespace": _NODE_LEASE_NS},
        "spec": {"holderIdentity": NODE_DOWN_HOLDER, "leaseDurationSeconds": _FOREVER,
                 "renewTime": now}})
    return node


def node_up(state: State, name: str, node: str | None = None, timeout: float = 60) -> str:
    """Give the node back to KWOK (it heartbeats again) and wait until it is Ready and its
    node.kubernetes.io taints are gone."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    node = _node_name(state, name, node)
    try:
        client.CoordinationV1Api(api_client(state, name)).delete_namespaced_lease(
            node, _NODE_LEASE_NS)
    except ApiException as exc:
        if exc.status != 404:  # no Lease: KWOK has not taken it yet
            raise
    wait_nodes_ready(state, name, [node], timeout)
    return node


def _release_leases(state: State, name: str) -> None:
    """Delete the node Leases not held by `node_down` (those nodes stay down)."""
    import urllib3
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    coord = client.CoordinationV1Api(api_client(state, name))
    try:
        for lease in coord.list_namespaced_lease(_NODE_LEASE_NS, _request_timeout=5).items:
            if lease.spec.holder_identity != NODE_DOWN_HOLDER:
                with contextlib.suppress(ApiException):  # gone already
                    coord.delete_namespaced_lease(lease.metadata.name, _NODE_LEASE_NS,
                                                  _request_timeout=5)
    except (ApiException, urllib3.exceptions.HTTPError):
        pass  # API server down: KWOK takes the Leases over once they expire


def node_ready(node: Any) -> bool:
    """Ready, and none of the taints the node lifecycle controller sets (not-ready,
    unreachable, ...): what the scheduler and the provider need to place work there."""
    ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
    return ready and not any(t.key.startswith("node.kubernetes.io/")
                             for t in node.spec.taints or [])


def wait_nodes_ready(state: State, name: str, nodes: list[str], timeout: float = 60) -> None:
    core = _core(state, name)
    _wait(lambda: all(node_ready(core.read_node(n)) for n in nodes), timeout,
          f"{name} nodes {', '.join(nodes)} Ready and untainted (is KWOK up?)")


# -- up / down --------------------------------------------------------------------------
# inotify instances a cluster's processes hold (apiserver 3, Kueue 3, controllers 1: counted
# from /proc/*/fd); the kernel's default limit, 128 per user, runs out at about 17 clusters, and
# then a Kueue exits with "too many open files" and its webhooks refuse every write.
INOTIFY_PER_CLUSTER = 7
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def check_inotify(clusters: int, limit_file: Path = INOTIFY_LIMIT) -> None:
    """Refuse, with the fix, a sandbox the user's inotify limit cannot hold (the benchmarks'
    20 clusters), rather than fail a minute later at a dead webhook."""
    try:
        limit = int(limit_file.read_text())
    except (OSError, ValueError):
        return  # not Linux, or not readable: nothing to check against
    need = clusters * INOTIFY_PER_CLUSTER + 16  # and the rest of the machine
    if limit < need:
        raise SandboxError(
            f"{clusters} clusters need about {need} inotify instances, and this machine allows "
            f"{limit} per user (fs.inotify.max_user_instances). Fix: `sudo sysctl -w "
            f"fs.inotify.max_user_instances={max(1024, need)}`, or run fewer clusters")


def up(specs: list[ClusterSpec] | None = None, fleets: list[str] | None = None) -> State:
    from airflow_provider_skyshare.sandbox import build

    if build.needed():
        build.build()
    state = State.load()
    specs = list(specs or ([] if state.clusters else DEFAULT_CLUSTERS))
    if not specs and not state.clusters:
        specs = list(DEFAULT_CLUSTERS)
    for spec in specs:
        if spec.name not in state.clusters:
            used = {c["index"] for c in state.clusters.values()}
            index = next(i for i in range(1000) if i not in used)
            state.clusters[spec.name] = {**asdict(spec), "index": index}
    for path in state.forget_missing_fleets():
        print(f"skyshare-sandbox: forgetting fleet {path}: the file is gone (its orgs' "
              "namespaces stay on the clusters; `up --fleet FILE` adds it again)",
              file=sys.stderr)
    for path in fleets or []:
        path = str(Path(path).resolve())
        if path not in state.fleets:
            try:  # a broken fleet file fails here, before anything runs
                tenants.fleets([path], {})
            except FleetError as exc:
                raise SandboxError(f"--fleet {path}: {exc}") from None
            state.fleets.append(path)
    for key in [k for k in state.pids if k.rpartition("/")[2] in LEGACY_COMPONENTS]:
        _kill(state.pids.pop(key))  # holds the port of the component that replaced it
        # and KWOK then renewed leases too slowly for the node lifecycle controller
        _kill(state.pids.pop(f"{key.partition('/')[0]}/kwok", None))
    state.save()
    known = {pid for pid in state.pids.values() if alive(pid)}
    for pid in _strays():  # lost track of: they would hold the ports of the new ones
        if pid not in known:
            _kill(pid)
    check_inotify(len(state.clusters))
    certs.ensure_all(paths.state_dir() / "pki")
    _ensure_kueue_certs()
    ensure_etcd(state)
    names = list(state.clusters)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        list(pool.map(lambda n: _up_cluster(state, n), names))
    state.save()
    write_kubeconfig(state)
    return state


def _up_cluster(state: State, name: str) -> None:
    try:
        _up_cluster_steps(state, name)
    except SandboxError:
        raise
    except Exception as exc:  # one readable line instead of a thread traceback
        raise SandboxError(f"{name}: {type(exc).__name__}: {str(exc)[:600]}; "
                           f"see {paths.state_dir() / 'logs'}") from exc


def _up_cluster_steps(state: State, name: str) -> None:
    marker = _cdir(name) / ".bootstrapped"
    first = not marker.exists()
    fresh = not component_alive(state, name, "apiserver")
    start_component(state, name, "apiserver")
    if fresh or not marker.exists():
        bootstrap_base(state, name)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda c: start_component(state, name, c),
                      ("scheduler", "controllers", "kwok", "kueue")))
    if fresh or not marker.exists():
        bootstrap_queues(state, name)
        if first:  # new nodes carry the not-ready taint until the lifecycle controller lifts it
            wait_nodes_ready(state, name,
                             [n.metadata.name for n in _core(state, name).list_node().items])
        marker.touch()
    # Every up: a fleet added since (`up --fleet`) brings its orgs to running clusters too.
    objects = tenants.objects(state.tenant_fleets(), name)
    _apply_all(api_client(state, name), name, objects)
    _wait_enforced(state, name, objects)


def _wait_enforced(state: State, name: str, objects: list[dict[str, Any]]) -> None:
    """The API server loads admission policies a moment after they are stored: `up` returns
    once it refuses what the tier policy refuses (a dry run in an org's namespace)."""
    tiered = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"
              and NS_TIER_LABEL in (o["metadata"].get("labels") or {})]
    if not tiered:
        return
    api = api_client(state, name)
    probe = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "skyshare-policy-probe", "namespace": tiered[0]},
             "spec": {"containers": [{"name": "c", "image": "none"}]}}  # no queue: refused

    def refused() -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            apply(api, probe, dry_run=True)
        except ApiException as exc:  # the refusal is what we wait for; the rest is retried
            if exc.status == 403 and TIER_POLICY in str(exc.body):
                return
            raise
        raise SandboxError(f"{name}: the tier policy does not refuse a pod without a queue yet")

    _retrying(name, f"the tier policy {TIER_POLICY} in force", refused, timeout=30)


def _strays() -> list[int]:
    """Processes started from this state dir that state.json lost track of (e.g. two `up`s
    racing): every component's command line names a file under the state dir."""
    marker = str(paths.state_dir())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and str(paths.bin_dir()) in cmdline:
            found.append(int(entry.name))
    return found


def down() -> None:
    state = State.load()
    for key, pid in list(state.pids.items()):
        if key != "etcd":
            _kill(pid)
    for pid in _strays():
        if pid != state.pids.get("etcd"):
            _kill(pid)
    _kill(state.pids.get("etcd"))
    for pid in _strays():
        _kill(pid)
    d = paths.state_dir()
    if d.exists():
        shutil.rmtree(d, onerror=_gone_is_fine)


def _gone_is_fine(func: Any, path: str, exc_info: Any) -> None:
    """rmtree of the state: a file that vanished meanwhile (etcd removing its last WAL as it
    exits, on a loaded machine) is what was wanted; anything else fails `down`."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
