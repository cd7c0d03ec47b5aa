"""The claim Leases as bodies (claims.py): a claim, its tombstone, and when a tombstone may go."""

from __future__ import annotations

from airflow_provider_skyshare import claims
from airflow_provider_skyshare.names import A_HISTORY, L_ATTEMPT, L_VERDICT
from airflow_provider_skyshare.timeline import Attempt, Timeline

T0 = 1_800_000_000.0
FIRST = Attempt(1, "bair", "borrower", "t-a1", "skyshare-rise", T0, outcome="Preempted")


def claim(rv: str = "5") -> dict:
    return claims.lease(namespace="skyshare-rise", name="t-a1", task_key="k", try_number=1,
                        attempt=2, holder="B", now=T0, history=Timeline((FIRST,)),
                        successor=None, resource_version=rv)


def test_a_tombstone_keeps_the_claim_and_its_version_and_adds_the_verdict():
    body = claim()
    tomb = claims.entombed(body, verdict="success", holder="A", now=T0 + 5)
    found = claims.read("bair", tomb)
    assert found.verdict == "success" and found.holder == "A"
    assert found.held.resource_version == "5"  # the precondition: a renewed claim is reread
    assert tomb["metadata"]["labels"][L_ATTEMPT] == "2"
    assert tomb["metadata"]["annotations"][A_HISTORY] == body["metadata"]["annotations"][
        A_HISTORY]
    assert found.renewed_at == T0 + 5
    assert claims.read("bair", body).verdict == ""  # a claim is not a tombstone


def test_a_new_tombstone_is_labelled_for_the_sweep():
    body = claims.lease(namespace="ns", name="t-a2", task_key="k", try_number=1, attempt=3,
                        holder="A", now=T0, history=Timeline((FIRST,)), successor=None,
                        verdict="killed")
    assert body["metadata"]["labels"][L_VERDICT] == "killed"
    assert "resourceVersion" not in body["metadata"]  # created, not overwritten


def test_only_a_tombstone_older_than_its_keep_time_expires():
    tomb = claims.entombed(claim(), verdict="failed", holder="A", now=T0)
    assert not claims.tombstone_expired(tomb, T0 + claims.TOMBSTONE_SECONDS - 1)
    assert claims.tombstone_expired(tomb, T0 + claims.TOMBSTONE_SECONDS + 1)
    # a live claim is never swept, however old (its holder's clock may be far behind)
    assert not claims.tombstone_expired(claim(), T0 + 10 * claims.TOMBSTONE_SECONDS)
