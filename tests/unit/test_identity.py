"""Whose work a task is: derived from Airflow's team or bundle; the DAG may only agree."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_skyshare.fleet import Fleet, parse
from airflow_provider_skyshare.identity import IdentityError, Origin, org_of


def fleet(identity: str = "airflow", **org_extra: dict[str, Any]) -> Fleet:
    orgs = [{"name": "rise", "members": ["romil"], "bundles": ["rise-dags"]},
            {"name": "bair", "members": ["abbeel"], "bundles": ["bair-dags"]},
            {"name": "open", "members": ["*"]}]
    for org in orgs:
        org.update(org_extra.get(org["name"], {}))
    return parse({
        "defaults": {"gpu_products": {"T4": "Tesla-T4"}},
        "policy": {"identity": identity},
        "orgs": orgs,
        "clusters": [{"name": "rise", "owner": "rise", "context": "r"},
                     {"name": "bair", "owner": "bair", "context": "b"}],
    }, source="fleet.yaml")


@pytest.mark.parametrize(("origin", "declared", "user", "org"), [
    (Origin(bundle="rise-dags"), None, "airflow", "rise"),
    (Origin(bundle="bair-dags"), "bair", "abbeel", "bair"),
    (Origin(bundle="bair-dags"), None, None, "bair"),
    (Origin(bundle="anything", team="open"), None, "someone", "open"),  # the team decides
    (Origin(bundle="rise-dags", team="rise"), "rise", "romil", "rise"),
    (Origin(bundle=None, team="bair"), None, "abbeel", "bair"),
    (Origin(bundle="rise-dags"), None, "stranger", "rise"),  # in no org: nothing to contradict
])
def test_the_org_comes_from_the_team_else_the_bundle(origin, declared, user, org) -> None:
    assert org_of(fleet(), origin, declared, user) == org


@pytest.mark.parametrize(("origin", "declared", "user", "words"), [
    (Origin(bundle="bair-dags"), "rise", "abbeel",
     ["org='rise' is not the org of this DAG, 'bair' (from DAG bundle 'bair-dags' in "
      "fleet.yaml)", "drop org="]),
    (Origin(bundle="bair-dags"), None, "romil",
     ["owner 'romil' is a member of rise, not of 'bair'", "give the task an owner of 'bair'"]),
    (Origin(bundle="bair-dags", team="bair"), "rise", None,
     ["the org of this DAG, 'bair' (from the Airflow team 'bair' of DAG bundle 'bair-dags')"]),
    (Origin(bundle="lab-dags"), None, None,
     ["DAG bundle 'lab-dags' belongs to no org of fleet.yaml", "orgs[].bundles"]),
    (Origin(bundle=None), "rise", "romil",
     ["did not say which DAG bundle", "policy.identity: owner"]),
    (Origin(bundle="x", team="mit"), None, None,
     ["Airflow team 'mit' is not an org of fleet.yaml", "add an org named 'mit'"]),
    (Origin(bundle="rise-dags", team="bair"), None, None,
     ["bundle 'rise-dags' belongs to Airflow team 'bair' but to org 'rise'"]),
])
def test_what_contradicts_airflow_is_refused_naming_the_derived_org(origin, declared, user,
                                                                    words) -> None:
    with pytest.raises(IdentityError) as err:
        org_of(fleet(), origin, declared, user)
    for w in words:
        assert w in str(err.value)


def test_owner_identity_believes_the_dag_but_checks_members() -> None:
    f = fleet("owner")
    assert org_of(f, Origin(bundle="bair-dags"), "rise", "romil") == "rise"  # bundle ignored
    assert org_of(f, Origin(), "open", "anyone") == "open"
    with pytest.raises(IdentityError, match=r"user 'abbeel' is not a member of org 'rise' "
                                            r"\(members: romil\)"):
        org_of(f, Origin(), "rise", "abbeel")
    with pytest.raises(IdentityError, match="user None is not a member"):
        org_of(f, Origin(), "rise", None)
    with pytest.raises(IdentityError, match="must say its org"):
        org_of(f, Origin(), None, "romil")


def test_owner_identity_with_an_org_without_members_refuses_everyone() -> None:
    f = fleet("owner", rise={"members": []})
    with pytest.raises(IdentityError, match=r"members: \(nobody\)"):
        org_of(f, Origin(), "rise", "romil")
