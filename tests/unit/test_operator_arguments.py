"""Bad operator arguments are refused when the DAG is parsed, each with what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_skyshare.operators import MultiClusterGpuOperator

FLEET = str(Path(__file__).resolve().parents[2] / "dags" / "fleet.yaml")
GOOD = {"task_id": "t", "image": "busybox", "org": "rise", "gpus": "T4:2", "fleet_file": FLEET,
        "owner": "romil"}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"gpus": "T4"}, "PRODUCT:COUNT"),
        ({"gpus": "T4:0"}, ">= 1"),
        ({"gpus": "T4:-2"}, ">= 1"),
        ({"gpus": "T4:two"}, "PRODUCT:COUNT"),
        ({"gpus": None}, "gpus='T4:2'"),
        ({"gpu_product": "T4", "gpu_count": 2}, "not both"),
        ({"gpus": None, "gpu_product": "T4", "gpu_count": 0}, ">= 1"),
        ({"gpus": "A100:1"}, "offered by no cluster"),
        ({"org": "berkeley"}, "unknown org"),
        ({"max_preemptions": -1}, "max_preemptions must be a whole number >= 0"),
        ({"max_preemptions": 1.5}, "max_preemptions must be a whole number >= 0"),
        ({"queue_timeout": -5}, "queue_timeout must be"),
        ({"unreachable_grace": 0}, "unreachable_grace must be"),
        ({"on_finish_action": "delete"}, "delete_pod, delete_succeeded_pod, keep_pod"),
        ({"on_unreachable": "retry"}, "use 'move' or 'fail'"),
        ({"image": ""}, "image is empty"),
        ({"org": None}, None),  # the org comes from Airflow at run time
        ({"org": "bair"}, None),  # checked against the DAG's bundle at run time
        ({"fleet_file": "/nonexistent/fleet.yaml"}, "file not found"),
        ({"gpus": "T4:4"}, None),  # fits no node now, but that is a runtime verdict: accepted
    ],
)
def test_bad_arguments_fail_at_parse_time_with_the_fix(changes, expected):
    kwargs = {**GOOD, **changes}
    if expected is None:
        MultiClusterGpuOperator(**kwargs)
        return
    with pytest.raises(ValueError) as err:
        MultiClusterGpuOperator(**kwargs)
    assert expected in str(err.value)
    assert "task 't'" in str(err.value)


def test_templated_values_are_checked_at_run_time_not_parse_time():
    op = MultiClusterGpuOperator(**{**GOOD, "org": "{{ params.org }}", "gpus": "{{ params.gpus }}"})
    assert op.org == "{{ params.org }}"
    assert "gpus" in op.template_fields and "org" in op.template_fields


def test_template_keeps_kubernetes_pod_operator_meanings():
    from kubernetes.client import models as k8s

    op = MultiClusterGpuOperator(
        **GOOD, cmds=["python"], arguments=["train.py"], env_vars={"A": "1"},
        labels={"team": "ml"}, annotations={"note": "x"}, node_selector={"zone": "a"},
        tolerations=[k8s.V1Toleration(key="gpu", operator="Exists")],
        volumes=[k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource())],
        volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data")],
        container_resources=k8s.V1ResourceRequirements(requests={"cpu": "2"}),
        service_account_name="trainer",
    )
    pod = op.build_template()
    c = pod["spec"]["containers"][0]
    assert (c["name"], c["image"], c["command"], c["args"]) == ("base", "busybox", ["python"],
                                                               ["train.py"])
    assert c["env"] == [{"name": "A", "value": "1"}]
    assert c["volumeMounts"] == [{"mountPath": "/data", "name": "data"}]
    assert c["resources"] == {"requests": {"cpu": "2"}}
    assert pod["metadata"] == {"labels": {"team": "ml"}, "annotations": {"note": "x"}}
    assert pod["spec"]["nodeSelector"] == {"zone": "a"}
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert pod["spec"]["serviceAccountName"] == "trainer"
    assert pod["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(("ours", "airflows", "expected"), [
    (None, None, False),  # Airflow's own default for every deferrable operator
    (None, "True", True),  # [operators] default_deferrable is honoured
    (None, "False", False),
    ("", "True", True),  # empty (the provider's default): as Airflow's
    ("True", "False", True),  # [skyshare] default_deferrable wins when set
    ("False", "True", False),
])
def test_default_deferrable_follows_skyshare_then_airflow(monkeypatch, ours, airflows, expected):
    for key, value in (("SKYSHARE", ours), ("OPERATORS", airflows)):
        if value is None:
            monkeypatch.delenv(f"AIRFLOW__{key}__DEFAULT_DEFERRABLE", raising=False)
        else:
            monkeypatch.setenv(f"AIRFLOW__{key}__DEFAULT_DEFERRABLE", value)
    assert MultiClusterGpuOperator(**GOOD).deferrable is expected
    assert MultiClusterGpuOperator(**GOOD, deferrable=not expected).deferrable is (not expected)


@pytest.mark.parametrize(("value", "expected"), [(None, -1), (-1, -1), (0, 0), (3, 3)])
def test_map_index_zero_is_a_real_map_index(value, expected) -> None:
    from types import SimpleNamespace

    from airflow_provider_skyshare.operators.gpu import _map_index

    assert _map_index(SimpleNamespace(map_index=value)) == expected


def test_a_fleet_file_the_platform_did_not_configure_is_refused(monkeypatch, tmp_path):
    other = tmp_path / "mine.yaml"
    other.write_text(Path(FLEET).read_text())
    monkeypatch.setenv("AIRFLOW__SKYSHARE__FLEET_FILE", FLEET)
    MultiClusterGpuOperator(**GOOD)  # the configured one, named
    MultiClusterGpuOperator(**{**GOOD, "fleet_file": None})  # the default
    with pytest.raises(ValueError, match="is not a fleet file this Airflow is configured with"):
        MultiClusterGpuOperator(**{**GOOD, "fleet_file": str(other)})


def _context(bundle, team=None):
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1, map_index=-1,
                         bundle_instance=SimpleNamespace(name=bundle) if bundle else None)
    return {"ti": ti, "dag_run": SimpleNamespace(team_name=team)}


@pytest.mark.parametrize(("changes", "bundle", "team", "expected"), [
    ({"org": "rise"}, "bair", None, "org='rise' is not the org of this DAG"),
    ({"org": None, "owner": "romil"}, "bair", None, "owner 'romil' is a member of rise, not of"),
    ({"org": None}, "elsewhere", None, "DAG bundle 'elsewhere' belongs to no org"),
    ({"org": None}, None, None, "did not say which DAG bundle"),
    ({"org": "rise"}, "rise", "bair", "belongs to Airflow team 'bair' but to org 'rise'"),
])
def test_a_spoofed_org_is_refused_before_anything_reaches_a_cluster(changes, bundle, team,
                                                                   expected, monkeypatch):
    from airflow_provider_skyshare import clients
    from airflow_provider_skyshare.operators.gpu import SkyshareTaskError

    def no_cluster(*_args, **_kwargs):
        raise AssertionError("a cluster was contacted")

    monkeypatch.setattr(clients, "async_api", no_cluster)
    monkeypatch.setattr(clients, "sync_api", no_cluster)
    op = MultiClusterGpuOperator(**{**GOOD, **changes})
    with pytest.raises(SkyshareTaskError, match=expected) as err:
        op.execute(_context(bundle, team))
    assert "'bair'" in str(err.value) or "elsewhere" in str(err.value) or bundle is None


def test_the_org_is_derived_from_the_bundle():
    from airflow_provider_skyshare.operators.gpu import origin

    op = MultiClusterGpuOperator(**{**GOOD, "org": None, "owner": "abbeel"})
    sup = op._supervisor(_context("bair"))
    assert sup.job.request.org == "bair" and sup.job.fleet.view == "bair"
    assert origin(_context("rise", "rise")).team == "rise"
