"""KubernetesPodOperator parity (issue 16): the same pod arguments build the same pod as KPO,
except the parts the placement owns; what cannot apply is refused at parse time with why.

KPO's pod is ``build_pod_request_obj(None, dry_run=True)`` (no context, no cluster); ours is
``build_template()`` then ``pods.build`` for one attempt, as follow._create_action does.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.policies import hookimpl
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.secret import Secret
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from airflow_provider_skyshare import fleetfile, pods
from airflow_provider_skyshare.finish import FinishPolicy, skip_reason
from airflow_provider_skyshare.follow import Status, Verdict
from airflow_provider_skyshare.names import (
    BASE_CONTAINER,
    GPU_RESOURCE,
    MANAGED_BY,
    PREFIX,
    PRIORITY_LABEL,
    QUEUE_LABEL,
    Kind,
)
from airflow_provider_skyshare.operators import MultiClusterGpuOperator
from airflow_provider_skyshare.operators.gpu import SkyshareTaskError
from airflow_provider_skyshare.outcomes import Outcome
from airflow_provider_skyshare.placement import Request

FLEET = str(Path(__file__).resolve().parents[2] / "dags" / "fleet.yaml")
OURS = {"task_id": "t", "org": "rise", "gpus": "T4:2", "fleet_file": FLEET, "owner": "romil"}
REQUEST = Request("T4", 2, "rise", "romil")
IMAGE = "nvcr.io/nvidia/pytorch:24.05-py3"
KPO_LABELS = {"airflow_version", "airflow_kpo_in_cluster"}
SECRET_VOLUME = re.compile(r"secretvol[0-9a-f-]{36}")

TEMPLATE = {  # a pod template as a platform team writes one, with parts the placement owns
    "metadata": {"name": "from-template", "namespace": "elsewhere",
                 "labels": {"team": "ml", QUEUE_LABEL: "not-ours"},
                 "annotations": {"note": "template"}},
    "spec": {
        "priorityClassName": "template-priority",
        "nodeSelector": {"nvidia.com/gpu.product": "A100", "zone": "a"},
        "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
        "containers": [
            {"name": "trainer", "image": "template-image",
             "resources": {"limits": {"cpu": "4", GPU_RESOURCE: "8"}},
             "env": [{"name": "FROM_TEMPLATE", "value": "1"}],
             "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]},
            {"name": "sidecar", "image": "envoy"},
        ],
        "initContainers": [{"name": "fetch", "image": "busybox", "command": ["true"]}],
    },
}
FULL_POD_SPEC = k8s.V1Pod(
    metadata=k8s.V1ObjectMeta(labels={"spec": "full"}),
    spec=k8s.V1PodSpec(containers=[k8s.V1Container(
        name="main", image="full-image", env=[k8s.V1EnvVar(name="FROM_FULL", value="1")])],
        host_aliases=None, dns_policy="Default"),
)
SECRETS = [Secret("env", "db_password", "db", "password"), Secret("env", None, "all-of-it"),
           Secret("volume", "/etc/tls", "tls",
                  items=[k8s.V1KeyToPath(key="tls.crt", path="cert.pem")])]
INIT = [k8s.V1Container(name="warm", image="busybox", command=["sh", "-c", "echo warm"])]
DNS = k8s.V1PodDNSConfig(nameservers=["1.1.1.1"], searches=["svc.local"],
                         options=[k8s.V1PodDNSConfigOption(name="ndots", value="2")])
EXISTING = {  # arguments the operator took before issue 16, for combinations
    "cmds": ["python"], "arguments": ["train.py"], "env_vars": {"A": "1"},
    "labels": {"team": "ml"}, "annotations": {"note": "x"}, "node_selector": {"zone": "b"},
    "tolerations": [k8s.V1Toleration(key="gpu", operator="Exists")],
    "volumes": [k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource())],
    "volume_mounts": [k8s.V1VolumeMount(name="data", mount_path="/data")],
    "container_resources": k8s.V1ResourceRequirements(requests={"cpu": "2"}),
    "service_account_name": "trainer", "image_pull_policy": "Always",
    "image_pull_secrets": "regcred", "termination_grace_period": 45,
    "security_context": k8s.V1PodSecurityContext(run_as_user=1000),
    "container_security_context": k8s.V1SecurityContext(read_only_root_filesystem=True),
}

CASES: dict[str, dict[str, Any]] = {
    "nothing new": {},
    "env_from": {"env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="s"))]},
    "secrets": {"secrets": SECRETS},
    "configmaps": {"configmaps": ["settings", "more"]},
    "pod_template_file": {"pod_template_file": "<file>"},
    "pod_template_dict": {"pod_template_dict": TEMPLATE},
    "full_pod_spec": {"full_pod_spec": FULL_POD_SPEC},
    "init_containers": {"init_containers": INIT},
    "ports": {"ports": [k8s.V1ContainerPort(container_port=8080, name="http")]},
    "skip_on_exit_code": {"skip_on_exit_code": [100, 101]},
    "active_deadline_seconds": {"active_deadline_seconds": 3600},
    "runtime_class_name": {"runtime_class_name": "nvidia"},
    "hostnetwork": {"hostnetwork": True},
    "dnspolicy": {"dnspolicy": "ClusterFirstWithHostNet", "hostnetwork": True},
    "dns_config": {"dnspolicy": "None", "dns_config": DNS},
    "schedulername (the default)": {"schedulername": "default-scheduler"},
    "automount_service_account_token": {"automount_service_account_token": False},
    "do_xcom_push=False": {"do_xcom_push": False},
    "file + full_pod_spec + arguments": {
        "pod_template_file": "<file>", "full_pod_spec": FULL_POD_SPEC, **EXISTING,
        "init_containers": INIT, "runtime_class_name": "nvidia"},
    "dict + full_pod_spec + env sources": {
        "pod_template_dict": TEMPLATE, "full_pod_spec": FULL_POD_SPEC, "secrets": SECRETS,
        "configmaps": ["settings"], "env_vars": [k8s.V1EnvVar(name="B", value="2")],
        "env_from": [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="c"))]},
    "template + secrets + ports + network": {
        "pod_template_dict": TEMPLATE, "secrets": SECRETS[2:],
        "ports": [k8s.V1ContainerPort(container_port=22)], "hostnetwork": True,
        "dnspolicy": "ClusterFirstWithHostNet", "dns_config": DNS,
        "automount_service_account_token": True, "active_deadline_seconds": 60},
    "every argument": {
        **EXISTING, "pod_template_dict": TEMPLATE, "full_pod_spec": FULL_POD_SPEC,
        "secrets": SECRETS, "configmaps": ["settings"], "init_containers": INIT,
        "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name="s"))],
        "ports": [k8s.V1ContainerPort(container_port=8080)], "skip_on_exit_code": 3,
        "active_deadline_seconds": 7200, "runtime_class_name": "nvidia", "hostnetwork": True,
        "dnspolicy": "ClusterFirstWithHostNet", "dns_config": DNS,
        "schedulername": "default-scheduler", "automount_service_account_token": False},
}


@pytest.fixture
def template_file(tmp_path: Path) -> str:
    import yaml

    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE))
    return str(path)


def with_file(kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    return {k: path if v == "<file>" else copy.deepcopy(v) for k, v in kwargs.items()}


def kpo_pod(kwargs: dict[str, Any]) -> dict[str, Any]:
    op = KubernetesPodOperator(task_id="t", image=IMAGE, namespace="ns", name="n", **kwargs)
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(None, dry_run=True))


def our_pod(kwargs: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    op = MultiClusterGpuOperator(**OURS, image=IMAGE, **kwargs)
    cluster = fleetfile.cached(FLEET).clusters["bair"]
    identity = pods.TaskIdentity(dag_id="d", task_id="t", run_id="r")
    return pods.build(op.build_template(), identity=identity, attempt=attempt, cluster=cluster,
                      tier=cluster.tier_for("rise"), request=REQUEST, preemptions=0)


def pruned(value: Any) -> Any:
    """Without empty values: KPO writes [] and {} where ours leaves the field out."""
    if isinstance(value, dict):
        items = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def comparable(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod less what is the placement's (ours) or KPO's own bookkeeping."""
    pod = copy.deepcopy(pod)
    meta, spec = pod.pop("metadata"), pod["spec"]
    ours = (MANAGED_BY, QUEUE_LABEL, PRIORITY_LABEL)
    pod["labels"] = {k: v for k, v in (meta.get("labels") or {}).items()
                     if k not in KPO_LABELS and k not in ours and not k.startswith(PREFIX)}
    pod["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                          if not k.startswith(PREFIX)}
    spec.pop("priorityClassName", None)
    (spec.get("nodeSelector") or {}).pop("nvidia.com/gpu.product", None)
    base = next(c for c in spec["containers"] if c["name"] == BASE_CONTAINER)
    for part in ("limits", "requests"):
        ((base.get("resources") or {}).get(part) or {}).pop(GPU_RESOURCE, None)
    base["env"] = [e for e in base.get("env") or [] if not e["name"].startswith("SKYSHARE_")]
    if base.get("terminationMessagePolicy") == "File":  # KPO spells out the API's default
        del base["terminationMessagePolicy"]
    names: dict[str, str] = {}  # Secret volumes are named secretvol<uuid4> on every build
    text = SECRET_VOLUME.sub(lambda m: names.setdefault(m[0], f"secretvol-{len(names)}"),
                             json.dumps(pruned(pod)))
    return json.loads(text)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_pod_is_kubernetes_pod_operators(case: str, template_file: str) -> None:
    kwargs = with_file(CASES[case], template_file)
    kpo, ours = comparable(kpo_pod(kwargs)), comparable(our_pod(kwargs))
    assert ours == kpo


def test_every_new_argument_is_in_the_table() -> None:
    new = {"env_from", "secrets", "configmaps", "pod_template_file", "pod_template_dict",
           "full_pod_spec", "init_containers", "ports", "skip_on_exit_code",
           "active_deadline_seconds", "runtime_class_name", "hostnetwork", "dnspolicy",
           "dns_config", "schedulername", "automount_service_account_token", "do_xcom_push"}
    assert new <= set(inspect.signature(MultiClusterGpuOperator.__init__).parameters)
    assert new <= {k for kwargs in CASES.values() for k in kwargs}


def test_the_placement_wins_over_a_template(template_file: str) -> None:
    pod = our_pod({"pod_template_file": template_file}, attempt=2)
    meta, spec = pod["metadata"], pod["spec"]
    assert (meta["name"], meta["namespace"]) == ("t-" + pods.TaskIdentity("d", "t", "r").key[:8]
                                                 + "-t1-a2", "skyshare-rise")
    assert meta["labels"][QUEUE_LABEL] == "skyshare-borrower" and meta["labels"]["team"] == "ml"
    assert spec["priorityClassName"] == "low-priority"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4", "zone": "a"}
    base, sidecar = spec["containers"]
    assert (base["name"], base["image"], sidecar["name"]) == (BASE_CONTAINER, IMAGE, "sidecar")
    assert base["resources"]["limits"] == {"cpu": "4", GPU_RESOURCE: "2"}
    assert spec["initContainers"][0]["name"] == "fetch" and spec["restartPolicy"] == "Never"


def test_kpo_templates_what_we_template() -> None:
    """Each argument both operators take is templated in ours where KPO templates it."""
    ours = set(inspect.signature(MultiClusterGpuOperator.__init__).parameters)
    assert set(KubernetesPodOperator.template_fields) & ours <= set(
        MultiClusterGpuOperator.template_fields)


def test_jinja_inside_kubernetes_objects_is_rendered_as_kpo_renders_it() -> None:
    import jinja2

    op = MultiClusterGpuOperator(
        **OURS, image="busybox", configmaps=["{{ params.cm }}"],
        env_vars=[k8s.V1EnvVar(name="RUN", value="{{ params.run }}")],
        env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(
            name="{{ params.cm }}"))])
    op.render_template_fields({"params": {"cm": "settings", "run": "7"}},
                              jinja_env=jinja2.Environment())
    assert op.configmaps == ["settings"] and op.env_vars[0].value == "7"
    assert op.env_from[0].config_map_ref.name == "settings"


REFUSED = [
    ({"priority_class_name": "high"}, "the priority class is the provider's"),
    ({"schedulername": "volcano"}, "Kueue admits this pod and kube-scheduler places it"),
    ({"do_xcom_push": True}, "do_xcom_push=True"),
    ({"callbacks": object}, "KubernetesPodOperatorCallback"),
    ({"pod_template_dict": {"spec": {"schedulerName": "yunikorn", "containers": []}}},
     "pod_template_dict: schedulerName 'yunikorn'"),
    ({"full_pod_spec": k8s.V1Pod(spec=k8s.V1PodSpec(containers=[], scheduler_name="x"))},
     "full_pod_spec: schedulerName 'x'"),
    ({"skip_on_exit_code": "1"}, "skip_on_exit_code must be an exit code or a list"),
    ({"skip_on_exit_code": [1.5]}, "skip_on_exit_code must be an exit code or a list"),
    ({"active_deadline_seconds": 0}, "active_deadline_seconds must be whole seconds > 0"),
    ({"hostnetwork": "yes"}, "hostnetwork must be True or False"),
    ({"ports": [{"containerPort": 22}]}, "ports must be kubernetes V1ContainerPort objects"),
]


@pytest.mark.parametrize(("changes", "expected"), REFUSED, ids=[str(c) for c, _ in REFUSED])
def test_what_cannot_apply_is_refused_at_parse_time_with_why(changes, expected) -> None:
    with pytest.raises(ValueError) as err:
        MultiClusterGpuOperator(**OURS, image="busybox", **changes)
    assert expected in str(err.value) and "task 't'" in str(err.value)
    if not any(word in expected for word in ("must be", "is not")):  # a refusal: why, and
        assert len(str(err.value)) > 120 and ("Drop" in str(err.value)  # what to do
                                              or "drop" in str(err.value))


def test_a_template_file_naming_another_scheduler_is_refused_at_run_time(tmp_path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("spec:\n  schedulerName: volcano\n  containers: [{name: c, image: i}]\n")
    op = MultiClusterGpuOperator(**OURS, image="busybox", pod_template_file=str(path))
    with pytest.raises(SkyshareTaskError, match="schedulerName 'volcano'"):
        op.build_template()
    missing = MultiClusterGpuOperator(**OURS, image="busybox", pod_template_file="/no/pod.yaml")
    with pytest.raises(SkyshareTaskError, match="no such file"):
        missing.build_template()


class _Platform:
    """A platform team's pod_mutation_hook (airflow_local_settings): a toleration for its
    GPU nodes, and a priority class the placement must overrule."""

    @staticmethod
    @hookimpl
    def pod_mutation_hook(pod: k8s.V1Pod) -> None:
        pod.spec.tolerations = [*(pod.spec.tolerations or []),
                                k8s.V1Toleration(key="platform", operator="Exists")]
        pod.spec.priority_class_name = "platform-says"
        pod.metadata.labels = {**(pod.metadata.labels or {}), "platform": "yes"}


@pytest.fixture
def platform_hook():
    from airflow.settings import get_policy_plugin_manager

    manager = get_policy_plugin_manager()
    manager.register(_Platform, name="skyshare-test-platform")
    try:
        yield
    finally:
        manager.unregister(name="skyshare-test-platform")


def test_the_platforms_pod_mutation_hook_applies_as_kpo_applies_it(platform_hook) -> None:
    ours, kpo = our_pod({}), kpo_pod({})
    for pod in (ours, kpo):
        assert {"key": "platform", "operator": "Exists"} in pod["spec"]["tolerations"]
        assert pod["metadata"]["labels"]["platform"] == "yes"
    assert kpo["spec"]["priorityClassName"] == "platform-says"
    tier = fleetfile.cached(FLEET).clusters["bair"].tier_for("rise")
    assert ours["spec"]["priorityClassName"] == tier.priority_class  # the placement's
    assert ours["metadata"]["labels"][QUEUE_LABEL]


# -- skip_on_exit_code: the verdict becomes a skipped task ---------------------------------
def verdict(status: Status, code: int | None) -> Verdict:
    kind = Kind.SUCCEEDED if status is Status.SUCCESS else Kind.FAILED
    return Verdict(status, "m", Outcome(kind, "Error", exit_code=code))


@pytest.mark.parametrize(("status", "code", "skips"), [
    (Status.FAILED, 100, True),
    (Status.FAILED, 1, False),
    (Status.FAILED, None, False),
    (Status.SUCCESS, 0, False),
    (Status.QUEUE_TIMEOUT, 100, False),  # never ran to its end: not the job's exit code
    (Status.PREEMPTION_LIMIT, 100, False),
])
def test_skip_on_exit_code_is_the_base_containers_exit_code(status, code, skips) -> None:
    policy = FinishPolicy(skip_on_exit_code=(100, 101))
    assert (skip_reason(verdict(status, code), policy) is not None) is skips
    assert skip_reason(verdict(status, code), FinishPolicy()) is None


def test_exit_code_zero_listed_skips_a_success_as_kpo_does() -> None:
    assert skip_reason(verdict(Status.SUCCESS, 0), FinishPolicy(skip_on_exit_code=(0,)))


def test_the_skip_codes_travel_to_the_trigger() -> None:
    op = MultiClusterGpuOperator(**OURS, image="busybox", skip_on_exit_code=100)
    policy = op._finish_policy()
    assert policy.skip_on_exit_code == (100,)
    assert FinishPolicy.from_dict(policy.to_dict()) == policy
    assert FinishPolicy.from_dict({"get_logs": False}).skip_on_exit_code == ()  # older triggers


def test_execute_complete_skips_the_task(monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from airflow_provider_skyshare.operators import gpu

    async def no_finish(*_args: Any) -> None:
        return None

    state = SimpleNamespace(timeline=SimpleNamespace(to_list=lambda: [{"attempt": 1}]))
    monkeypatch.setattr(gpu, "finish", no_finish)
    monkeypatch.setattr(gpu, "failure_message", lambda *_a: "failed")
    monkeypatch.setattr(gpu, "saved_fleet", lambda _e: SimpleNamespace(fleet=None))
    monkeypatch.setattr(gpu, "from_event", lambda _e, _f: (state, verdict(Status.FAILED, 100)))
    pushed: list[dict[str, Any]] = []
    ti = SimpleNamespace(xcom_push=lambda **kw: pushed.append(kw))
    op = MultiClusterGpuOperator(**OURS, image="busybox", skip_on_exit_code=[100])
    with pytest.raises(AirflowSkipException, match="exit code 100"):
        op.execute_complete({"ti": ti}, {})
    assert pushed == [{"key": "skyshare_timeline", "value": [{"attempt": 1}]}]
    monkeypatch.setattr(gpu, "from_event", lambda _e, _f: (state, verdict(Status.FAILED, 1)))
    with pytest.raises(gpu.SkyshareTaskError):
        op.execute_complete({"ti": ti}, {})


@pytest.mark.parametrize(("code", "event"), [(100, "TaskSkippedEvent"), (1, "TaskFailedEvent")])
def test_the_trigger_ends_the_task_skipped(monkeypatch, code, event) -> None:
    from airflow_provider_skyshare.triggers import pod as trigger_module

    async def no_finish(*_args: Any) -> None:
        return None

    stored: list[str] = []

    async def store(_state: Any, key: str) -> None:
        stored.append(key)

    async def decided(_sup: Any) -> tuple[Any, Verdict]:
        return SimpleNamespace(), verdict(Status.FAILED, code)

    monkeypatch.setattr(trigger_module, "finish", no_finish)
    monkeypatch.setattr(trigger_module, "failure_message", lambda *_a: "failed")
    monkeypatch.setattr(trigger_module, "Supervisor",
                        lambda *_a, **_k: SimpleNamespace(logs_shown=lambda _s: {}))
    trigger = trigger_module.MultiClusterPodTrigger(
        state={}, finish=FinishPolicy(skip_on_exit_code=(100,)).to_dict())
    trigger.trigger_id = 1

    async def saved() -> None:
        return None

    monkeypatch.setattr(trigger, "_saved", saved)
    monkeypatch.setattr(trigger, "_verdict", decided)
    monkeypatch.setattr(trigger, "_store_timeline", store)

    async def events() -> list[Any]:
        return [e async for e in trigger.run()]

    (ended,) = asyncio.run(events())
    assert type(ended).__name__ == event and stored == ["skyshare_timeline"]


def test_the_worker_decides_by_the_fleet_it_placed_with_not_a_fresh_read(monkeypatch) -> None:
    """deferrable=False: the verdict (and on_kill, which may run in a signal handler) uses the
    fleet in memory; an edited or unreadable fleet meanwhile must not fail a finished task."""
    from airflow_provider_skyshare.operators import gpu

    async def no_finish(*_args: Any) -> None:
        return None

    def unreadable(_state: Any) -> Any:
        raise AssertionError("the fleet was read again")

    placed_with = object()
    seen: list[Any] = []
    state = SimpleNamespace(timeline=SimpleNamespace(to_list=lambda: [{"attempt": 1}]))
    monkeypatch.setattr(gpu, "finish", no_finish)
    monkeypatch.setattr(gpu, "saved_fleet", unreadable)
    monkeypatch.setattr(gpu, "from_event", lambda _e, fleet: (
        seen.append(fleet) or state, verdict(Status.SUCCESS, 0)))
    op = MultiClusterGpuOperator(**OURS, image="busybox")
    op._followed = placed_with
    assert op.execute_complete({"ti": SimpleNamespace()}, {}) == [{"attempt": 1}]
    assert seen == [placed_with]
