"""Whose work a task is: the org, from what the platform controls, never from the DAG.

Pure. Under ``policy.identity: airflow`` (the default) the org is the Airflow team of the
DAG's bundle (multi-team deployments), else the org that lists the bundle in
``orgs[].bundles``. Airflow's scheduler says which bundle a task comes from; a DAG author
cannot change it. What the DAG says (``org=``, its owner) may only agree. Under
``policy.identity: owner`` (single-team set-ups) the DAG's ``org=`` and owner are believed,
checked against ``orgs[].members``: docs/security.md says what that does not protect.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_skyshare.fleet import Fleet, Identity


class IdentityError(ValueError):
    """The task's org cannot be derived, or what the DAG says contradicts it; with the fix."""


@dataclass(frozen=True)
class Origin:
    """Where a task's DAG comes from, as Airflow (not the DAG) says."""

    bundle: str | None = None
    team: str | None = None


def org_of(fleet: Fleet, origin: Origin, declared: str | None, user: str | None) -> str:
    """The org the task runs for; raises IdentityError naming the derived org."""
    if fleet.policy.identity is Identity.OWNER:
        return _declared(fleet, declared, user)
    org, source = _derived(fleet, origin)
    if declared and declared != org:
        raise IdentityError(
            f"org={declared!r} is not the org of this DAG, {org!r} (from {source}). Fix: drop "
            f"org= (the org comes from Airflow), or move the DAG to a bundle of {declared!r}")
    others = sorted(o.name for o in fleet.orgs.values()
                    if o.name != org and user in o.members)
    if others and user not in fleet.orgs[org].members:
        raise IdentityError(
            f"owner {user!r} is a member of {', '.join(others)}, not of {org!r}, the org of "
            f"this DAG ({source}). Fix: run it from a bundle of {others[0]!r}, or give the "
            f"task an owner of {org!r}")
    return org


def _derived(fleet: Fleet, origin: Origin) -> tuple[str, str]:
    """(org, how it was derived) from the team, else the bundle."""
    mapped = fleet.org_of_bundle(origin.bundle) if origin.bundle else None
    if origin.team:
        if origin.team not in fleet.orgs:
            raise IdentityError(
                f"the DAG's Airflow team {origin.team!r} is not an org of {fleet.source}. Fix: "
                f"add an org named {origin.team!r} to the fleet (orgs are Airflow teams)")
        if mapped is not None and mapped.name != origin.team:
            raise IdentityError(
                f"bundle {origin.bundle!r} belongs to Airflow team {origin.team!r} but to org "
                f"{mapped.name!r} in {fleet.source}. Fix: map the bundle to {origin.team!r} in "
                "orgs[].bundles, or remove it there (the team decides)")
        return origin.team, f"the Airflow team {origin.team!r} of DAG bundle {origin.bundle!r}"
    if origin.bundle is None:
        raise IdentityError(
            "Airflow did not say which DAG bundle this task comes from (as in dag.test()), "
            "so its org cannot be derived. Fix: run it from a DAG bundle listed in "
            "orgs[].bundles, or, for single-team development only, set policy.identity: owner")
    if mapped is None:
        raise IdentityError(
            f"DAG bundle {origin.bundle!r} belongs to no org of {fleet.source}. Fix: add it to "
            "the bundles of its org (orgs[].bundles), or give the bundle an Airflow team")
    return mapped.name, f"DAG bundle {origin.bundle!r} in {fleet.source}"


def _declared(fleet: Fleet, declared: str | None, user: str | None) -> str:
    """policy.identity: owner: the DAG's org=, if its owner is a member."""
    if not declared:
        raise IdentityError(
            f"{fleet.source} sets policy.identity: owner, so the task must say its org: pass "
            "org='...'")
    org = fleet.org(declared)
    if not org.admits(user):
        members = ", ".join(sorted(org.members)) or "(nobody)"
        raise IdentityError(
            f"user {user!r} is not a member of org {org.name!r} (members: {members}), so it "
            f"cannot claim {org.name}'s owner tier. Fix: run as a member (DAG owner or the "
            f"operator's user=...), or add the user to orgs[{org.name}].members in {fleet.source}")
    return org.name
