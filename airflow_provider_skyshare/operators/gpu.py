"""MultiClusterGpuOperator: KubernetesPodOperator's arguments, placed across a shared fleet.

Thin on purpose: argument checks and the pod template here; placing, submitting,
following and moving are supervisor.Supervisor's (the same loop runs in the trigger).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Container, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, conf

from airflow_provider_skyshare import clients, kube, logstream
from airflow_provider_skyshare.clients import ClusterConfigError
from airflow_provider_skyshare.finish import (
    FinishAction,
    FinishPolicy,
    event_payload,
    failure_message,
    finish,
    from_event,
    skip_reason,
)
from airflow_provider_skyshare.fleet import Fleet, FleetError
from airflow_provider_skyshare.fleetconf import (  # noqa: F401 - some lived here before
    configured_fleet_files,
    default_fleet_file,
    fleet_path,
    fleet_variable,
    platform_fleet,
    saved_fleet,
)
from airflow_provider_skyshare.follow import Follow, Job, OnUnreachable, Settings, Status
from airflow_provider_skyshare.identity import IdentityError, Origin, org_of
from airflow_provider_skyshare.links import SkyshareTimelineLink
from airflow_provider_skyshare.placement import (
    PlacementError,
    Request,
    check_count,
    check_nodes,
    parse_gpus,
)
from airflow_provider_skyshare.placement import validate as validate_request
from airflow_provider_skyshare.pods import BASE_CONTAINER, TaskIdentity
from airflow_provider_skyshare.supervisor import Supervisor
from airflow_provider_skyshare.triggers.pod import TIMELINE_XCOM, MultiClusterPodTrigger

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.secret import Secret
    from airflow.sdk import Context
    from kubernetes.client import models as k8s

FINISH_ACTIONS = tuple(a.value for a in FinishAction)
UNREACHABLE_ACTIONS = tuple(a.value for a in OnUnreachable)


class SkyshareTaskError(RuntimeError):
    """The task's work ended without success; the message lists every attempt."""


def default_deferrable() -> bool:
    """``[skyshare] default_deferrable`` when set, else Airflow's own ``[operators]
    default_deferrable`` (as every provider's deferrable operator): a deployment decides
    once whether long waits free the worker slot."""
    ours = (conf.get("skyshare", "default_deferrable", fallback="") or "").strip()
    if ours:
        return conf.getboolean("skyshare", "default_deferrable")
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def _templated(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


DEFAULT_SCHEDULER = "default-scheduler"
SCHEDULER_REFUSED = (
    "Kueue admits this pod and kube-scheduler places it; the provider tells a preempted pod "
    "from a failed one by what Kueue and kube-scheduler write on it, and another scheduler "
    "would queue and preempt by rules of its own. Drop it (every fleet cluster schedules with "
    f"{DEFAULT_SCHEDULER})")


def _exit_codes(value: int | Container[int] | None) -> tuple[int, ...] | None:
    """KubernetesPodOperator's skip_on_exit_code (one code or several) as a tuple; None
    when it is neither."""
    codes = [] if value is None else [value] if not isinstance(value, Container) else value
    if isinstance(value, str) or not all(isinstance(c, int) and not isinstance(c, bool)
                                         for c in codes):
        return None
    return tuple(codes)


def _refusals(op: MultiClusterGpuOperator) -> list[str]:
    """KubernetesPodOperator arguments given that this operator cannot honour, with why."""
    found = []
    if op.priority_class_name is not None:
        found.append(
            f"priority_class_name={op.priority_class_name!r}: the priority class is the "
            "provider's: each cluster's tier for the org sets it (and Kueue's priority label), "
            "and Kueue preempts by it. Drop it; the org's tier in the fleet file decides")
    if op.schedulername not in (None, DEFAULT_SCHEDULER):
        found.append(f"schedulername={op.schedulername!r}: {SCHEDULER_REFUSED}")
    if op._pod_xcom_push:
        found.append(
            "do_xcom_push=True (the pod's /airflow/xcom/return.json through a sidecar) is not "
            "implemented: the return value is the attempts timeline. Write results to shared "
            "storage and pass their path downstream, or drop do_xcom_push")
    if op.callbacks:
        found.append(
            "callbacks (KubernetesPodOperatorCallback) are not called: the pod is created and "
            "followed by a trigger across clusters, not by KPO's pod manager. Use "
            "on_success_callback/on_failure_callback (the timeline is in XCom), or drop them")
    return found


def _nested_template_fields(content: Any) -> tuple[str, ...]:
    """KubernetesPodOperator's templated fields of Kubernetes model objects."""
    from kubernetes.client import models as k8s

    return next((fields for kind, fields in (
        (k8s.V1EnvVar, ("value", "name")),
        (k8s.V1ResourceRequirements, ("limits", "requests")),
        (k8s.V1Volume, ("name", "persistent_volume_claim", "config_map")),
        (k8s.V1VolumeMount, ("name", "sub_path")),
        (k8s.V1PersistentVolumeClaimVolumeSource, ("claim_name",)),
        (k8s.V1ConfigMapVolumeSource, ("name",)),
        (k8s.V1EnvFromSource, ("config_map_ref",)),
        (k8s.V1ConfigMapEnvSource, ("name",)),
    ) if isinstance(content, kind)), ())


def _is_port(port: Any) -> bool:
    from kubernetes.client import models as k8s

    return isinstance(port, k8s.V1ContainerPort) or callable(getattr(port, "to_k8s_client_obj",
                                                                      None))


def _as_dict(pod: Any) -> dict[str, Any]:
    """A V1Pod (or a dict) as the API's JSON."""
    from kubernetes.client import ApiClient

    return pod if isinstance(pod, dict) else ApiClient().sanitize_for_serialization(pod)


def _as_pod(pod: Any) -> k8s.V1Pod:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return PodGenerator.deserialize_model_dict(pod) if isinstance(pod, dict) else pod


def _template_conflict(pod: dict[str, Any]) -> str | None:
    """What in a pod template cannot stay (the placement overrides the rest, docs say so)."""
    scheduler = (pod.get("spec") or {}).get("schedulerName")
    if scheduler not in (None, DEFAULT_SCHEDULER) and not _templated(scheduler):
        return f"schedulerName {scheduler!r}: {SCHEDULER_REFUSED}"
    return None


class MultiClusterGpuOperator(BaseOperator):
    """Run a container on whichever shared GPU cluster should take it, and keep it running.

    :param image: container image (as KubernetesPodOperator).
    :param gpus: ``"PRODUCT:COUNT"``, e.g. ``"T4:2"``; or give ``gpu_product`` and ``gpu_count``.
    :param org: optional: the org the work is for. Airflow says it (the team or bundle of
        the DAG, docs/security.md); when given, it must agree, or the task is refused.
        Required only where the fleet sets ``policy.identity: owner``.
    :param user: who asks; default: the task's owner (checked against ``orgs[].members``).
    :param fleet_file: one of the fleet files ``[skyshare] fleet_file`` lists (default: the
        fleet in the Airflow Variable ``[skyshare] fleet_variable`` names, else the first
        file); a DAG cannot point the provider at a fleet of its own.
    :param nodes: how many pods (nodes) the job runs on, each with ``gpus``: more than 1 makes
        a gang, N pods admitted together as one Kueue pod group on one cluster, with the
        variables torchrun reads (MASTER_ADDR, NNODES, NODE_RANK, ...), and moved whole when
        any member is preempted or lost (docs/operator.md, "Multi-node jobs").
    :param max_preemptions: moves (preempted or lost) allowed before the task fails.
    :param queue_timeout: seconds an attempt may wait queued before the task fails.
    :param unreachable_grace: seconds the running attempt's cluster may be unreachable
        before the work moves (``on_unreachable="move"``) or the task fails (``"fail"``).
    :param wait_for_termination: place a preempted attempt's replacement only once the old
        pod is gone (or its grace period is over), so two copies never write one checkpoint;
        False moves at once, and the two may overlap for the grace period.
    :param deferrable: follow the pod in the triggerer, or in the worker slot; default
        ``[skyshare] default_deferrable``, else ``[operators] default_deferrable``.
    :param skip_on_exit_code: as KubernetesPodOperator: a pod whose base container ended with
        one of these exit codes makes the task skipped instead of failed.
    The other arguments mean what they mean for KubernetesPodOperator; the pod is built as its
    ``build_pod_request_obj`` builds it (pod_template_file/pod_template_dict, full_pod_spec,
    then the arguments), and the placement's parts (name, namespace, Kueue labels, priority
    class, GPUs, GPU node selector) win over all of them. ``priority_class_name``, another
    ``schedulername``, ``do_xcom_push=True`` and ``callbacks`` are refused (docs/operator.md).
    """

    template_fields: Sequence[str] = (
        "image", "cmds", "arguments", "env_vars", "labels", "annotations", "gpus", "gpu_product",
        "org", "user", "fleet_file", "node_selector", "service_account_name",
        # templated by KubernetesPodOperator too
        "container_resources", "volumes", "volume_mounts", "env_from", "configmaps",
        "pod_template_file", "pod_template_dict",
    )
    template_fields_renderers = {"env_vars": "py", "labels": "py", "annotations": "py"}
    ui_color = "#76b900"
    operator_extra_links = (SkyshareTimelineLink(),)

    def __init__(
        self,
        *,
        image: str,
        org: str | None = None,
        gpus: str | None = None,
        gpu_product: str | None = None,
        gpu_count: int | None = None,
        user: str | None = None,
        fleet_file: str | None = None,
        cmds: list[str] | None = None,
        arguments: list[str] | None = None,
        env_vars: dict[str, str] | list[Any] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        container_resources: Any = None,
        volumes: list[Any] | None = None,
        volume_mounts: list[Any] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[Any] | None = None,
        affinity: Any = None,
        service_account_name: str | None = None,
        image_pull_policy: str | None = None,
        image_pull_secrets: Any = None,
        security_context: Any = None,
        container_security_context: Any = None,
        termination_grace_period: int | None = None,
        get_logs: bool = True,
        container_logs: Iterable[str] | str | Literal[True] | None = None,
        on_finish_action: str = "delete_pod",
        deferrable: bool | None = None,
        nodes: int = 1,
        max_preemptions: int = 5,
        queue_timeout: float | None = None,
        unreachable_grace: float = 30.0,
        on_unreachable: str = "move",
        wait_for_termination: bool = True,
        env_from: list[Any] | None = None,
        secrets: list[Secret] | None = None,
        configmaps: list[str] | None = None,
        pod_template_file: str | None = None,
        pod_template_dict: dict[str, Any] | None = None,
        full_pod_spec: Any = None,
        init_containers: list[Any] | None = None,
        ports: list[Any] | None = None,
        skip_on_exit_code: int | Container[int] | None = None,
        active_deadline_seconds: int | None = None,
        runtime_class_name: str | None = None,
        hostnetwork: bool = False,
        dnspolicy: str | None = None,
        dns_config: Any = None,
        schedulername: str | None = None,
        automount_service_account_token: bool | None = None,
        priority_class_name: str | None = None,
        do_xcom_push: bool = False,
        callbacks: Any = None,
        **kwargs: Any,
    ) -> None:
        # BaseOperator's do_xcom_push stays True: the timeline is always the return value.
        # KubernetesPodOperator's (the pod's /airflow/xcom/return.json) is refused below.
        super().__init__(**kwargs)
        self.image = image
        self.org = org
        self.gpus = gpus
        self.gpu_product = gpu_product
        self.gpu_count = gpu_count
        self.user = user
        self.fleet_file = fleet_file
        self.cmds = cmds
        self.arguments = arguments
        self.env_vars = env_vars
        self.labels = labels
        self.annotations = annotations
        self.container_resources = container_resources
        self.volumes = volumes
        self.volume_mounts = volume_mounts
        self.node_selector = node_selector
        self.tolerations = tolerations
        self.affinity = affinity
        self.service_account_name = service_account_name
        self.image_pull_policy = image_pull_policy
        self.image_pull_secrets = image_pull_secrets
        self.security_context = security_context
        self.container_security_context = container_security_context
        self.termination_grace_period = termination_grace_period
        self.get_logs = get_logs
        self.container_logs = container_logs
        self.on_finish_action = on_finish_action
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.nodes = nodes
        self.max_preemptions = max_preemptions
        self.queue_timeout = queue_timeout
        self.unreachable_grace = unreachable_grace
        self.on_unreachable = on_unreachable
        self.wait_for_termination = wait_for_termination
        self.env_from = env_from
        self.secrets = list(secrets or [])
        self.configmaps = configmaps
        self.pod_template_file = pod_template_file
        self.pod_template_dict = pod_template_dict
        self.full_pod_spec = full_pod_spec
        self.init_containers = init_containers
        self.ports = ports
        self.skip_on_exit_code = _exit_codes(skip_on_exit_code)
        self.active_deadline_seconds = active_deadline_seconds
        self.runtime_class_name = runtime_class_name
        self.hostnetwork = hostnetwork
        self.dnspolicy = dnspolicy
        self.dns_config = dns_config
        self.schedulername = schedulername
        self.automount_service_account_token = automount_service_account_token
        self.priority_class_name = priority_class_name
        self._pod_xcom_push = do_xcom_push
        self.callbacks = callbacks
        self._state: dict[str, Any] | None = None
        # the fleet this process placed by: the worker's own verdict and on_kill (which may
        # run in a signal handler) use it rather than read the fleet again
        self._followed: Fleet | None = None
        self._check_arguments()

    # -- checks at DAG parse time ----------------------------------------------------------
    def _check_arguments(self) -> None:
        where = f"task {self.task_id!r}"
        if not self.image and not _templated(self.image):
            raise ValueError(f"{where}: image is empty; pass image='repo/name:tag'")
        if self.gpus is not None and (self.gpu_product is not None or self.gpu_count is not None):
            raise ValueError(f"{where}: give gpus='T4:2' or gpu_product + gpu_count, not both")
        if self.gpus is None and (self.gpu_product is None or self.gpu_count is None):
            raise ValueError(f"{where}: say what to run on: gpus='T4:2' "
                             "(or gpu_product='T4', gpu_count=2)")
        try:
            if self.gpus is not None and not _templated(self.gpus):
                parse_gpus(self.gpus)
            if self.gpu_count is not None:
                check_count(self.gpu_count)
            check_nodes(self.nodes)
        except PlacementError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if not isinstance(self.max_preemptions, int) or self.max_preemptions < 0:
            raise ValueError(f"{where}: max_preemptions must be a whole number >= 0, "
                             f"got {self.max_preemptions!r}")
        if self.queue_timeout is not None and not (
            isinstance(self.queue_timeout, (int, float)) and self.queue_timeout > 0
        ):
            raise ValueError(f"{where}: queue_timeout must be a number of seconds > 0 or None, "
                             f"got {self.queue_timeout!r}")
        if not isinstance(self.unreachable_grace, (int, float)) or self.unreachable_grace <= 0:
            raise ValueError(f"{where}: unreachable_grace must be seconds > 0, "
                             f"got {self.unreachable_grace!r}")
        if not isinstance(self.wait_for_termination, bool):
            raise ValueError(f"{where}: wait_for_termination must be True or False, "
                             f"got {self.wait_for_termination!r}")
        if self.on_finish_action not in FINISH_ACTIONS:
            raise ValueError(f"{where}: on_finish_action={self.on_finish_action!r}; use one of "
                             f"{', '.join(FINISH_ACTIONS)}")
        if self.on_unreachable not in UNREACHABLE_ACTIONS:
            raise ValueError(f"{where}: on_unreachable={self.on_unreachable!r}; use 'move' or "
                             "'fail'")
        self._check_kpo_arguments(where)
        self._check_against_fleet(where)

    def _check_kpo_arguments(self, where: str) -> None:
        """KubernetesPodOperator's arguments this operator cannot honour are refused now,
        each with why and what to do, rather than ignored."""
        refusals = _refusals(self)
        if refusals:
            raise ValueError(f"{where}: " + "\n".join(refusals))
        if self.skip_on_exit_code is None:
            raise ValueError(f"{where}: skip_on_exit_code must be an exit code or a list of them, "
                             "e.g. skip_on_exit_code=100 or [100, 101]")
        deadline = self.active_deadline_seconds
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int)
                                     or deadline <= 0):
            raise ValueError(f"{where}: active_deadline_seconds must be whole seconds > 0 or "
                             f"None, got {deadline!r}")
        if not all(_is_port(p) for p in self.ports or []):
            raise ValueError(f"{where}: ports must be kubernetes V1ContainerPort objects (as for "
                             f"KubernetesPodOperator), got {self.ports!r}")
        if not isinstance(self.hostnetwork, bool):
            raise ValueError(f"{where}: hostnetwork must be True or False, "
                             f"got {self.hostnetwork!r}")
        for name in ("full_pod_spec", "pod_template_dict"):
            value = getattr(self, name)
            if value is not None and not _templated(value):
                found = _template_conflict(_as_dict(value))
                if found:
                    raise ValueError(f"{where}: {name}: {found}")

    def _check_against_fleet(self, where: str) -> None:
        """With literal values, check the fleet file, the org and the product now (an import
        error in the UI) rather than at run time. The org itself comes at run time."""
        values = (self.fleet_file, self.org, self.gpus, self.gpu_product)
        if any(_templated(v) for v in values) or not (
                self.fleet_file or default_fleet_file() or fleet_variable()):
            return
        try:
            fleet = platform_fleet(self.fleet_file)
            org = self.org or next(iter(fleet.orgs))  # any org: products are fleet-wide
            validate_request(self._request(org), fleet)
        except (FleetError, PlacementError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    def _request(self, org: str) -> Request:
        if self.gpus is not None:
            product, count = parse_gpus(self.gpus)
        else:
            product, count = str(self.gpu_product), int(self.gpu_count or 0)
        return Request(gpu_product=product, gpu_count=count, org=org,
                       user=self.user or self.owner, nodes=self.nodes)

    def _fleet(self) -> Fleet:
        return platform_fleet(self.fleet_file)

    # -- the pod template (KubernetesPodOperator's meaning of each argument) ---------------
    def build_template(self) -> dict[str, Any]:
        """The pod as KubernetesPodOperator.build_pod_request_obj builds it, less what the
        placement sets per attempt (pods.build): the arguments over full_pod_spec over
        pod_template_file/pod_template_dict (PodGenerator.reconcile_pods), then secrets, then
        the platform's ``pod_mutation_hook`` (airflow_local_settings), as KPO applies it. The
        placement's parts (name, labels, Kueue, priority, GPUs) still win over the hook's."""
        from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
        from airflow.settings import pod_mutation_hook

        pod = PodGenerator.reconcile_pods(self._template_pod(), self._argument_pod())
        for secret in self.secrets:
            pod = secret.attach_to_pod(pod)
        pod_mutation_hook(pod)
        body = _as_dict(pod)
        found = _template_conflict(body)
        if found:
            raise SkyshareTaskError(f"the pod template: {found}")
        if body["spec"].get("priorityClassName"):
            self.log.info("the pod template's priorityClassName %r gives way to the tier's",
                          body["spec"]["priorityClassName"])
        return body

    def _template_pod(self) -> k8s.V1Pod:
        """The base pod: pod_template_file (else pod_template_dict) under full_pod_spec."""
        from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
        from kubernetes.client import models as k8s

        if self.pod_template_file:
            if not os.path.isfile(self.pod_template_file):  # KPO only warns: an empty pod
                raise SkyshareTaskError(f"pod_template_file {self.pod_template_file!r}: no such "
                                        "file on this worker")
            base = PodGenerator.deserialize_model_file(self.pod_template_file)
        elif self.pod_template_dict:
            base = PodGenerator.deserialize_model_dict(self.pod_template_dict)
        elif self.full_pod_spec:
            return _as_pod(self.full_pod_spec)
        else:
            return k8s.V1Pod(metadata=k8s.V1ObjectMeta())
        return PodGenerator.reconcile_pods(base, _as_pod(self.full_pod_spec)) \
            if self.full_pod_spec else base

    def _argument_pod(self) -> k8s.V1Pod:
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import (
            convert_affinity,
            convert_image_pull_secrets,
            convert_toleration,
            convert_volume,
        )
        from kubernetes.client import models as k8s

        pull_secrets = self.image_pull_secrets
        if isinstance(pull_secrets, str) or pull_secrets:
            pull_secrets = convert_image_pull_secrets(pull_secrets)
        return k8s.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=k8s.V1ObjectMeta(labels=dict(self.labels or {}),
                                      annotations=dict(self.annotations or {})),
            spec=k8s.V1PodSpec(
                containers=[self._argument_container()],
                init_containers=self.init_containers or None,
                volumes=[convert_volume(v) for v in self.volumes or []] or None,
                node_selector=dict(self.node_selector or {}) or None,
                tolerations=[convert_toleration(t) for t in self.tolerations or []] or None,
                affinity=convert_affinity(self.affinity) if self.affinity else None,
                service_account_name=self.service_account_name,
                automount_service_account_token=self.automount_service_account_token,
                image_pull_secrets=pull_secrets or None,
                security_context=self.security_context,
                runtime_class_name=self.runtime_class_name,
                host_network=self.hostnetwork,
                dns_policy=self.dnspolicy,
                dns_config=self.dns_config,
                scheduler_name=self.schedulername,
                restart_policy="Never",
                active_deadline_seconds=self.active_deadline_seconds,
                termination_grace_period_seconds=self.termination_grace_period,
            ),
        )

    def _argument_container(self) -> k8s.V1Container:
        from airflow.providers.cncf.kubernetes.backcompat.backwards_compat_converters import (
            convert_configmap,
            convert_env_vars,
            convert_port,
            convert_volume_mount,
        )
        from kubernetes.client import models as k8s

        resources = self.container_resources
        if isinstance(resources, dict):
            resources = k8s.V1ResourceRequirements(**resources)
        env_from = [*(self.env_from or []), *(convert_configmap(c) for c in self.configmaps or [])]
        return k8s.V1Container(
            name=BASE_CONTAINER,
            image=self.image,
            command=self.cmds or None,
            args=self.arguments or None,
            env=convert_env_vars(self.env_vars) if self.env_vars else None,
            env_from=env_from or None,
            ports=[convert_port(p) for p in self.ports or []] or None,
            resources=resources,
            volume_mounts=[convert_volume_mount(v) for v in self.volume_mounts or []] or None,
            image_pull_policy=self.image_pull_policy,
            security_context=self.container_security_context,
        )

    def _render_nested_template_fields(self, content: Any, context: Context,
                                       jinja_env: Any, seen_oids: set[int]) -> None:
        """Jinja inside Kubernetes model objects, where KubernetesPodOperator renders it."""
        fields = _nested_template_fields(content)
        if fields and id(content) not in seen_oids:
            seen_oids.add(id(content))
            self._do_render_template_fields(content, fields, context, jinja_env, seen_oids)
            return
        super()._render_nested_template_fields(content, context, jinja_env, seen_oids)

    def _supervisor(self, context: Context) -> Supervisor:
        ti = context["ti"]
        fleet = self._fleet()
        org = org_of(fleet, origin(context), self.org, self.user or self.owner)
        request = self._request(org)
        self.log.info("org %s (%s identity); fleet %s", org, fleet.policy.identity.value,
                      fleet.source)
        try:
            validate_request(request, fleet)
        except PlacementError as exc:
            raise SkyshareTaskError(str(exc)) from None
        identity = TaskIdentity(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                                try_number=ti.try_number, map_index=_map_index(ti))
        settings = Settings(max_preemptions=self.max_preemptions, queue_timeout=self.queue_timeout,
                            unreachable_grace=float(self.unreachable_grace),
                            on_unreachable=OnUnreachable(self.on_unreachable),
                            wait_for_termination=self.wait_for_termination)
        job = Job(fleet, request, self.build_template(), identity, settings)
        return Supervisor.for_job(job, log=self.log, live_logs=self._finish_policy().live_logs)

    def _finish_policy(self) -> FinishPolicy:
        return FinishPolicy(FinishAction(self.on_finish_action), bool(self.get_logs),
                            tuple(self.skip_on_exit_code or ()),
                            logstream.container_logs(self.container_logs))

    # -- execute -> defer (the trigger ends the task) or follow here ---------------------------
    def execute(self, context: Context) -> Any:
        try:
            return self._execute(context)
        except (PlacementError, FleetError, ClusterConfigError, IdentityError) as exc:
            raise SkyshareTaskError(str(exc)) from None

    def _execute(self, context: Context) -> Any:
        sup = self._supervisor(context)
        self._followed = sup.job.fleet
        self._state = sup.state.to_dict()
        if not self.deferrable:
            self.log.info("following the pod in this worker slot (deferrable=False)")

        def placed(state: Follow) -> None:
            self._state = state.to_dict()
            _push_placement(context, state)

        state = asyncio.run(_in_loop(_checked(sup, _place(sup, placed,
                                                          follow=not self.deferrable))))
        self._state = state.to_dict()
        if state.verdict is not None:  # done here: nothing could take it, or followed here
            return self.execute_complete(context, event_payload(state, state.verdict,
                                                                sup.logs_shown(state)))
        self.defer(trigger=MultiClusterPodTrigger(state=self._state,
                                                  finish=self._finish_policy().to_dict()),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """The verdict in the worker: deferrable=False, and dag.test() (which runs triggers
        in-line and ignores the trigger's own end of the task). A real triggerer ends the
        task itself and this is not called."""
        self._state = event
        state, verdict = from_event(event, self._followed or saved_fleet(event).fleet)
        policy = self._finish_policy()
        shown = logstream.shown_from_dict(event.get("logs_shown"))  # streamed already
        asyncio.run(_in_loop(finish(state, verdict, policy, self.log, shown)))
        skipped = skip_reason(verdict, policy)
        if verdict.status is Status.SUCCESS and not skipped:
            return state.timeline.to_list()
        context["ti"].xcom_push(key=TIMELINE_XCOM, value=state.timeline.to_list())
        if skipped:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(skipped)
        raise SkyshareTaskError(failure_message(state, verdict))

    def _delete(self, cluster: Any, namespace: str, pod: str) -> None:
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        try:
            CoreV1Api(clients.sync_api(cluster)).delete_namespaced_pod(
                pod, namespace, grace_period_seconds=0, _request_timeout=15)
            self.log.info("deleted pod %s on %s", pod, cluster.name)
        except ApiException as exc:
            if exc.status != 404:
                self.log.warning("could not delete pod %s on %s: HTTP %s", pod, cluster.name,
                                 exc.status)
        except Exception as exc:  # noqa: BLE001 - unreachable: say so, don't mask the verdict
            self.log.warning("could not delete pod %s on %s: %s", pod, cluster.name, exc)

    def on_kill(self) -> None:
        """Delete this task's pods wherever they are (sync: may run in a signal handler)."""
        if not self._state:
            return
        from kubernetes.client import CoreV1Api

        try:
            fleet = Follow.from_dict(self._state,
                                     self._followed or saved_fleet(self._state).fleet).job.fleet
        except FleetError as exc:
            self.log.error("on_kill: cannot clean up this task's pods: %s", exc)
            return
        identity = TaskIdentity(**self._state["identity"])
        for cluster in fleet.clusters.values():
            try:
                api = CoreV1Api(clients.sync_api(cluster))
                listing = api.list_namespaced_pod(cluster.namespace,
                                                  label_selector=identity.selector(),
                                                  _request_timeout=10)
                for pod in listing.items:
                    self._delete(cluster, cluster.namespace, pod.metadata.name)
            except Exception as exc:  # noqa: BLE001 - try every cluster
                self.log.warning("on_kill: could not clean up on %s: %s", cluster.name, exc)


async def _in_loop(coro: Any) -> Any:
    """Run a coroutine, then close this loop's clients and watches (worker side)."""
    from airflow_provider_skyshare import watch

    try:
        return await coro
    finally:
        await watch.close_hubs()
        await clients.close_async_clients()


async def _checked(sup: Supervisor, then: Any) -> Any:
    """The org's credential on every cluster it may use first: no 403 in a later move."""
    try:
        await clients.check_access(sup.job.fleet)
    except BaseException:
        then.close()
        raise
    return await then


def origin(context: Context) -> Origin:
    """The DAG's bundle and team, as Airflow's scheduler told the worker (not the DAG)."""
    bundle = getattr(getattr(context["ti"], "bundle_instance", None), "name", None)
    team = getattr(context.get("dag_run"), "team_name", None)
    return Origin(bundle=bundle if isinstance(bundle, str) else None,
                  team=team if isinstance(team, str) else None)


async def _place(sup: Supervisor, placed: Callable[[Follow], None], follow: bool) -> Follow:
    """Place (or adopt) the first attempt, say where, and with ``follow`` (deferrable=False)
    follow it here to a verdict."""
    state = await sup.place()
    if state.verdict is not None:
        return state
    placed(state)
    return await sup.run() if follow else state


def _push_placement(context: Context, state: Follow) -> None:
    """Where the work went first (the UI, the seed DAG's sensor and the tests read it)."""
    attempt = state.timeline.last
    assert attempt is not None, "placed without an attempt"
    context["ti"].xcom_push(key="skyshare_placement", value={
        "cluster": attempt.cluster, "tier": attempt.tier, "pod": attempt.pod,
        "namespace": attempt.namespace, "attempt": attempt.number, "why": attempt.why,
    })


__all__ = ["MultiClusterGpuOperator", "SkyshareTaskError", "kube"]


def _map_index(ti: Any) -> int:
    """-1 for an unmapped task; 0 is a real map index (not falsy here)."""
    value = getattr(ti, "map_index", None)
    return -1 if value is None else int(value)
